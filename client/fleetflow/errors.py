"""Errors raised by the fleetflow client."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DuplicateTaskError",
    "ConnectFailure",
    "CoordinatorUnreachable",
    "FleetflowError",
    "InvalidAddressError",
    "RPCError",
    "WatchInterrupted",
    "FlowRunNotFound",
    "FlowRunFailed",
    "FlowRunCancelled",
    "FlowRunTimeout",
    "InvalidFlowError",
    "Retry",
    "NonRetryableError",
    "StoredObjectError",
    "StoredObjectMissing",
    "StoredObjectCorrupt",
    "PayloadTooLarge",
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

    def __reduce__(self) -> tuple:
        return (RPCError, (self.code, self.details))


class InvalidAddressError(FleetflowError, ValueError):
    """A coordinator address is not ``HOST:PORT`` (see :mod:`fleetflow.addresses`)."""


@dataclass(frozen=True)
class ConnectFailure:
    """Why one coordinator address could not be connected.

    Attributes:
        address: The address as given, with the IP address tried in
            parentheses when a name was resolved.
        kind: ``"refused"`` (nothing listens on the port), ``"unresolvable"``
            (the name does not resolve), ``"silent"`` (no answer: the host
            accepts TCP connections but never answers, or drops them),
            ``"unreachable"`` (another network error, e.g. no route to host)
            or ``"failed"`` (TCP connects but the gRPC connection fails, e.g.
            a TLS mismatch).
        detail: What was seen, in words.
    """

    address: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.address}: {self.kind} ({self.detail})"


class CoordinatorUnreachable(RPCError):
    """No coordinator address could be connected within the client's bound.

    The bound is ``connect_timeout_s`` (default 10 s) for a client that has
    never reached a coordinator, else its :class:`~fleetflow.Backoff`
    ``give_up_s`` (default 30 s) from the first failure. ``code`` is
    ``"UNAVAILABLE"``.

    Attributes:
        failures: One entry per address tried, saying why it failed.
        waited_s: How long the client tried, seconds.
        last_answer: What the coordinator itself last said before it went
            away (the details of its ``UNAVAILABLE`` answer, e.g. that its
            store failed on a full disk), or "".
    """

    def __init__(
        self, failures: tuple[ConnectFailure, ...], waited_s: float, last_answer: str = ""
    ) -> None:
        self.failures = tuple(failures)
        self.waited_s = waited_s
        self.last_answer = last_answer
        if len(self.failures) == 1:
            (only,) = self.failures
            message = (
                f"cannot reach the coordinator at {only.address}: {only.kind} ({only.detail}); "
                f"tried for {waited_s:.1f} s"
            )
        else:
            message = (
                f"cannot reach any of {len(self.failures)} coordinator addresses "
                f"(tried for {waited_s:.1f} s): " + "; ".join(str(f) for f in self.failures)
            )
        if last_answer:
            message += f"; before that it answered: {last_answer}"
        super().__init__("UNAVAILABLE", message)

    def __reduce__(self) -> tuple:
        return (type(self), (self.failures, self.waited_s, self.last_answer))


class WatchInterrupted(RPCError):
    """A flow run's event stream was lost and could not be resumed in time.

    Raised by ``watch`` when the coordinator stayed unreachable (or kept
    answering ``UNAVAILABLE``) past the retry budget. Every event up to
    ``last_seq`` was delivered exactly once; ``watch(flow_run_id,
    after_seq=last_seq)`` resumes from there. ``code`` is the code of the last
    failure (``"UNAVAILABLE"``); ``__cause__`` is that failure.

    Attributes:
        flow_run_id: The flow run watched.
        last_seq: ``seq`` of the last event delivered (the ``after_seq`` given
            when none was).
    """

    def __init__(self, flow_run_id: str, last_seq: int, reason: str, code: str = "UNAVAILABLE"):
        self.flow_run_id = flow_run_id
        self.last_seq = last_seq
        self.reason = reason
        super().__init__(
            code,
            f"watching flow run {flow_run_id} stopped after event {last_seq}: {reason}; "
            f"watch({flow_run_id!r}, after_seq={last_seq}) resumes",
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.flow_run_id, self.last_seq, self.reason, self.code))


class FlowRunNotFound(FleetflowError):
    """No flow run has this id."""


class InvalidFlowError(FleetflowError, ValueError):
    """The coordinator rejected a flow spec (INVALID_ARGUMENT); nothing was accepted."""


class FlowRunFailed(FleetflowError):
    """A flow run failed and its first failure could not be re-raised as itself."""


class FlowRunCancelled(FleetflowError):
    """The flow run was cancelled."""


class FlowRunTimeout(FleetflowError, TimeoutError):
    """A wait for a flow run's end ran out of time; the flow run goes on.

    Raised by ``result``, ``wait`` and ``run`` when their ``timeout`` passes
    while the flow run is still running. It is a :class:`TimeoutError`.

    Attributes:
        flow_run_id: The flow run: ``client.handle(flow_run_id)`` waits on it
            again (``.result()``) or cancels it (``.cancel()``).
    """

    def __init__(self, flow_run_id: str) -> None:
        super().__init__(f"flow run {flow_run_id} is still running")
        self.flow_run_id = flow_run_id

    def __reduce__(self) -> tuple:
        return (type(self), (self.flow_run_id,))


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


class StoredObjectError(FleetflowError):
    """A payload in the result store could not be read as it was written.

    Workers report it as an infrastructure failure of the attempt that needed
    the payload (so it counts against ``max_infra_failures``, not the task's
    retries); clients raise it from ``result()``.

    Attributes:
        key: The object's key in the store (``runs/<flow_run_id>/...``).
        url: Where the object is (``s3://bucket/...``, a path, or the
            coordinator-hosted store), for people to look at.
    """

    def __init__(self, key: str, url: str, problem: str) -> None:
        super().__init__(f"stored object {url}: {problem}")
        self.key = key
        self.url = url
        self.problem = problem

    def __reduce__(self) -> tuple:
        return (type(self), (self.key, self.url, self.problem))


class StoredObjectMissing(StoredObjectError):
    """The object is not in the store (deleted, pruned, or never fully written)."""


class StoredObjectCorrupt(StoredObjectError):
    """The object's bytes differ from what was written (size or checksum)."""


class PayloadTooLarge(FleetflowError, ValueError):
    """A payload is over a size limit; the message names the size, the limit and its setting.

    Attributes:
        size: The payload's size, bytes.
        limit: The limit it is over, bytes.
        setting: The setting that changes the limit.
    """

    def __init__(self, what: str, size: int, limit: int, setting: str) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes ({setting})")
        self.what = what
        self.size = size
        self.limit = limit
        self.setting = setting

    def __reduce__(self) -> tuple:
        return (type(self), (self.what, self.size, self.limit, self.setting))


class DuplicateTaskError(FleetflowError, ValueError):
    """Two different task definitions would share one task name in this process.

    Attributes:
        name: The task name both would have.
        first: ``file:line`` of the definition that holds the name.
        second: ``file:line`` of the one refused.
    """

    def __init__(self, name: str, first: str, second: str, *, factory: bool) -> None:
        self.name = name
        self.first = first
        self.second = second
        hint = (
            "a function that makes tasks (a factory) must give each one a distinct name: "
            "@task(name=...) or task(fn, name=...)"
            if factory
            else "rename one of the functions or pass @task(name=...)"
        )
        super().__init__(
            f"task name {name!r} is defined twice: at {first} and at {second}; "
            f"a task's name must identify one definition ({hint})"
        )

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.name, self.first, self.second, "factory" in str(self)))


def _rebuild(name: str, first: str, second: str, factory: bool) -> DuplicateTaskError:
    return DuplicateTaskError(name, first, second, factory=factory)
