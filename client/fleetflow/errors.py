"""Errors raised by the fleetflow client."""

from __future__ import annotations

__all__ = [
    "FleetflowError",
    "RPCError",
    "FlowRunNotFound",
    "FlowRunFailed",
    "FlowRunCancelled",
    "InvalidFlowError",
    "Retry",
    "NonRetryableError",
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


class Retry(Exception):  # noqa: N818 - named for what task code asks for, like Celery's
    """Raise from task code to ask for a retry, optionally after a given delay.

    The retry still counts against the task's ``retries``; ``delay`` (seconds)
    replaces the task's own backoff for this one retry.

    Args:
        delay: Seconds to wait before the next attempt; None uses the policy.
        message: Why, for the attempt history.
    """

    def __init__(self, delay: float | None = None, message: str = "retry requested") -> None:
        if delay is not None and not delay >= 0:
            raise ValueError(f"Retry(delay={delay!r}): must be >= 0 seconds")
        super().__init__(message)
        self.delay = delay

    def __reduce__(self) -> tuple:
        return (type(self), (self.delay, str(self)))


class NonRetryableError(Exception):
    """Raise from task code (or subclass) to fail the task run at once, without retries."""
