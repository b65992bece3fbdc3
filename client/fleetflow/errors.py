"""Errors raised by the fleetflow client."""

from __future__ import annotations

__all__ = [
    "FleetflowError",
    "RPCError",
    "FlowRunNotFound",
    "FlowRunFailed",
    "FlowRunCancelled",
    "InvalidFlowError",
]


class FleetflowError(Exception):
    """Root of every error fleetflow raises itself."""


class RPCError(FleetflowError):
    """The coordinator answered an RPC with an error status.

    Attributes:
        code: The ``grpc.StatusCode`` name, e.g. ``"UNAVAILABLE"``.
        details: The status message.
    """

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class FlowRunNotFound(FleetflowError):
    """No flow run has this id."""


class InvalidFlowError(FleetflowError, ValueError):
    """The coordinator rejected a flow spec (INVALID_ARGUMENT); nothing was accepted."""


class FlowRunFailed(FleetflowError):
    """A flow run failed and its first failure could not be re-raised as itself."""


class FlowRunCancelled(FleetflowError):
    """The flow run was cancelled."""
