"""The coordinator's errors and the one table that maps them to gRPC status codes.

Handlers never pick a status code themselves: they raise one of the errors
below (or let a store or core error escape) and the edge interceptor
(:mod:`fleetflow_coordinator.interceptors`) turns it into a status with
:func:`status_for`. Anything not in :data:`ERROR_TABLE` is a coordinator bug:
INTERNAL, with its traceback logged once. Nothing a peer can send yields
UNKNOWN (that is what gRPC answers for an exception it was not told about).

The codes follow gRPC's canonical meanings (grpc.io, "Status codes and their
use in gRPC"): the caller's fault is INVALID_ARGUMENT, NOT_FOUND,
ALREADY_EXISTS, RESOURCE_EXHAUSTED (a size or count limit), UNAUTHENTICATED
or PERMISSION_DENIED; UNAVAILABLE says "try again, maybe elsewhere" (a
failing store, a standby coordinator, shutting down).
"""

from __future__ import annotations

import grpc
from fleetflow.errors import StoredObjectMissing
from google.protobuf.message import DecodeError

from fleetflow_coordinator.core import InvalidFlowSpec
from fleetflow_coordinator.store import StoreError
from fleetflow_coordinator.store.base import NotLeader

__all__ = [
    "ERROR_TABLE",
    "FailedPrecondition",
    "DataLoss",
    "AlreadyExists",
    "CoordinatorError",
    "InvalidRequest",
    "LimitExceeded",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "status_for",
]


class CoordinatorError(Exception):
    """Root of the errors a handler raises to refuse a call; the message goes to the peer."""


class InvalidRequest(CoordinatorError, ValueError):
    """A field breaks a rule; the message names the field and the rule or limit."""


class NotFound(CoordinatorError, LookupError):
    """The flow run, task run or node named in the request does not exist."""


class AlreadyExists(CoordinatorError):
    """The request would create something that exists and belongs to someone else."""


class LimitExceeded(CoordinatorError):
    """A size or count limit of the bounds table; the message names the field and the limit."""


class Unauthenticated(CoordinatorError):
    """No credential, or one the coordinator does not know."""


class PermissionDenied(CoordinatorError):
    """A known credential that may not make this call (role) or act for this worker."""


class Unavailable(CoordinatorError):
    """The coordinator cannot serve now (standby, shutting down); retry, maybe elsewhere."""


class Unimplemented(CoordinatorError):
    """This coordinator does not offer the call (e.g. WorkerSession turned off)."""


class FailedPrecondition(CoordinatorError):
    """The request is valid but the state does not allow it (e.g. the store is not hosted here)."""


class DataLoss(CoordinatorError):
    """Bytes arrived damaged (an upload whose size or checksum does not match what was sent)."""


#: ``(exception type, status code)``, most specific first; the first match wins.
ERROR_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidFlowSpec, grpc.StatusCode.INVALID_ARGUMENT),
    (DecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (StoredObjectMissing, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (DataLoss, grpc.StatusCode.DATA_LOSS),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message a peer gets for ``exc``.

    Args:
        exc: An exception raised while serving a call.

    Returns:
        ``(code, message)`` from :data:`ERROR_TABLE`, or None when ``exc`` is
        not a refusal but a bug (the caller answers INTERNAL and logs it).
    """
    for kind, code in ERROR_TABLE:
        if isinstance(exc, kind):
            if isinstance(exc, DecodeError):
                return code, f"the request is not a valid protocol message: {exc}"
            if isinstance(exc, NotLeader):  # it stepped down while the call waited
                return code, "standby coordinator; the active one is unknown"
            if isinstance(exc, StoreError):
                return code, f"the coordinator's store failed: {exc}"
            return code, str(exc)
    return None
