"""Serialization of user data and errors (clients and workers only).

Arguments, results and exceptions are pickled with cloudpickle so that
lambdas and classes defined in ``__main__`` travel too. The coordinator only
ever sees the resulting ``bytes``.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import traceback
from collections import ChainMap
from collections.abc import Iterator, Mapping
from typing import Any

import cloudpickle

from fleetflow._logging import current_tail
from fleetflow.api.v1 import common_pb2

__all__ = ["dumps", "loads", "error_from_exception", "exception_from_error", "RemoteTaskError"]

_PROTOCOL = 5


#: Types the standard pickler writes exactly as cloudpickle would (by value,
#: never by reference to a module), about ten times faster.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
_CONTAINERS = frozenset({tuple, list, set, frozenset})


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with cloudpickle (protocol 5).

    Scalars of builtin types, and flat tuples, lists, sets and dicts of them,
    go through the standard pickler instead: the bytes mean the same to
    :func:`loads`, and a 100,000-item map is pickled item by item.
    """
    kind = type(obj)
    if kind in _PLAIN:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    if kind in _CONTAINERS and len(obj) <= 64 and all(type(x) in _PLAIN for x in obj):
        return pickle.dumps(obj, protocol=_PROTOCOL)
    if (
        kind is dict
        and len(obj) <= 64
        and all(type(k) in _PLAIN and type(v) in _PLAIN for k, v in obj.items())
    ):
        return pickle.dumps(obj, protocol=_PROTOCOL)
    return cloudpickle.dumps(obj, protocol=_PROTOCOL)


class _StandardExceptionReducers(Mapping):
    """``copyreg.dispatch_table`` without the reducers tblib registers for every exception.

    Importing ``distributed`` (the Dask executor) calls
    ``tblib.pickling_support.install()``, which registers a copyreg reducer
    for every exception class defined so far. Exceptions pickled that way need
    tblib to load (a client may not have it) and fail to load for classes with
    two builtin bases (``MemoryLimitExceeded``: ``MemoryError.__new__(...) is
    not safe``). Errors are pickled the standard way instead.
    """

    def __getitem__(self, cls: Any) -> Any:
        reducer = copyreg.dispatch_table[cls]
        if getattr(reducer, "__module__", "").startswith("tblib"):
            raise KeyError(cls)
        return reducer

    def __iter__(self) -> Iterator[Any]:
        return iter(copyreg.dispatch_table)

    def __len__(self) -> int:
        return len(copyreg.dispatch_table)


class _ErrorPickler(cloudpickle.Pickler):
    dispatch_table = ChainMap(
        cloudpickle.Pickler.dispatch_table.maps[0], _StandardExceptionReducers()
    )


def _dumps_error(exc: BaseException) -> bytes:
    """Pickle an exception with cloudpickle, ignoring tblib's reducers (see above)."""
    buffer = io.BytesIO()
    _ErrorPickler(buffer, protocol=_PROTOCOL).dump(exc)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """Unpickle bytes produced by :func:`dumps`."""
    return cloudpickle.loads(data)


class RemoteTaskError(Exception):
    """A task failed remotely with an exception that could not be re-created here.

    Attributes:
        type_name: Qualified type of the original exception (``"mymod.MyError"``).
        remote_traceback: The traceback text captured on the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


def _qualname(exc_type: type) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def error_from_exception(exc: BaseException, *, tb: str | None = None) -> common_pb2.TaskError:
    """Capture an exception as a TaskError message.

    Args:
        exc: The exception raised by task code.
        tb: Traceback text; formatted from ``exc`` when omitted.

    Returns:
        A TaskError with type, message, traceback text, the last lines the
        running attempt logged (inside a worker's attempt scope, see
        :mod:`fleetflow._logging`) and, when the exception pickles, the
        pickled exception.
    """
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = _dumps_error(exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception still reports its text
        pickled = b""
    return common_pb2.TaskError(
        type=_qualname(type(exc)),
        message=str(exc),
        traceback=tb,
        pickled=pickled,
        log_tail=current_tail(),
    )


def exception_from_error(error: common_pb2.TaskError) -> BaseException:
    """Re-create the original exception of a TaskError where possible.

    The returned exception carries the remote traceback as a note (PEP 678),
    so it shows when the exception is printed.

    Returns:
        The original exception (same type and message) or, when it cannot be
        unpickled here, a :class:`RemoteTaskError` with its type name and message.
    """
    exc: BaseException | None = None
    if error.pickled:
        try:
            candidate = loads(error.pickled)
            if isinstance(candidate, BaseException):
                exc = candidate
        except Exception:  # noqa: BLE001 - fall back to the text form
            exc = None
    if exc is None:
        exc = RemoteTaskError(error.type, error.message, error.traceback)
    if error.traceback:
        exc.add_note("Remote traceback (from the fleetflow worker):\n" + error.traceback.rstrip())
    if error.log_tail:
        exc.add_note("Last log lines of the failed attempt:\n" + "\n".join(error.log_tail))
    return exc
