"""Clients of the coordinator: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak ``CoordinatorService`` and share everything but the I/O: the
request builders, the response decoders, the error mapping and the retry
policy live in module-level helpers, so the two classes only differ in
``await``. Every RPC that fails with ``UNAVAILABLE`` is retried with
exponential backoff and jitter (see :class:`Backoff`), so a coordinator
restart is invisible to callers as long as it comes back within the budget.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from fleetflow._stats import FlowRunStats
from fleetflow._task import Flow
from fleetflow._taskruns import DemandInfo, TaskRunInfo
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
from fleetflow.credentials import Credentials
from fleetflow.errors import (
    FlowRunCancelled,
    FlowRunFailed,
    FlowRunNotFound,
    InvalidFlowError,
    RPCError,
)
from fleetflow.events import FlowEvent
from fleetflow.serde import exception_from_error, loads

__all__ = [
    "AsyncClient",
    "AsyncFlowRunHandle",
    "Backoff",
    "Client",
    "DEFAULT_ADDRESS",
    "FlowRunHandle",
    "FlowRunInfo",
    "TaskCounts",
    "WorkerInfo",
]

R = TypeVar("R")

#: Address a client connects to when given none.
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Largest message sent or received, bytes (flow specs and results can be big).
MAX_MESSAGE_BYTES = 256 * 2**20
_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's own reconnect backoff grows to 120 s by default; a restarted
    # coordinator should be found again within our retry budget.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
#: Time limit of one unary RPC, seconds.
_RPC_TIMEOUT_S = 60.0
#: Longest GetFlowRun long poll, seconds.
_LONG_POLL_S = 30.0
#: Extra time a long-poll RPC gets on top of its wait, seconds.
_LONG_POLL_GRACE_S = 10.0
#: Shortest pause between polls that returned early without an answer, seconds.
_MIN_POLL_GAP_S = 0.1

_TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TaskCounts:
    """Task run counts of one node of a flow run, by state.

    Attributes:
        node: Index of the node in the flow graph.
        task_name: Registered task name.
        map: True for a map node.
        total: Task runs of the node; None while a map node is not expanded.
    """

    node: int
    task_name: str
    map: bool
    total: int | None
    pending: int = 0
    scheduled: int = 0
    running: int = 0
    awaiting_retry: int = 0
    completed: int = 0
    failed: int = 0
    upstream_failed: int = 0
    cancelled: int = 0
    timed_out: int = 0

    @classmethod
    def from_proto(cls, counts: pb.TaskCounts) -> TaskCounts:
        """Decode a ``TaskCounts`` message."""
        return cls(
            node=counts.node,
            task_name=counts.task_name,
            map=counts.map,
            total=counts.total if counts.total >= 0 else None,
            pending=counts.pending,
            scheduled=counts.scheduled,
            running=counts.running,
            awaiting_retry=counts.awaiting_retry,
            completed=counts.completed,
            failed=counts.failed,
            upstream_failed=counts.upstream_failed,
            cancelled=counts.cancelled,
            timed_out=counts.timed_out,
        )

    @property
    def finished(self) -> int:
        """Task runs in a final state (completed, failed, upstream failed, cancelled, timed out)."""
        return self.completed + self.failed + self.upstream_failed + self.cancelled + self.timed_out


@dataclass(frozen=True)
class FlowRunInfo:
    """A snapshot of a flow run, as returned by ``get`` and ``list_flow_runs``.

    Attributes:
        flow_run_id: The flow run's id.
        name: The flow's name.
        state: ``"RUNNING"``, ``"COMPLETED"``, ``"FAILED"`` or ``"CANCELLED"``.
        created_at: Submission time, seconds since the Unix epoch.
        ended_at: End time, seconds since the Unix epoch; None while running.
        last_seq: ``seq`` of the flow run's latest event.
        nodes: Task run counts per node, in node order.
    """

    flow_run_id: str
    name: str
    state: str
    created_at: float
    ended_at: float | None
    last_seq: int
    nodes: tuple[TaskCounts, ...] = ()

    @classmethod
    def from_proto(cls, info: pb.FlowRunInfo) -> FlowRunInfo:
        """Decode a ``FlowRunInfo`` message."""
        return cls(
            flow_run_id=info.flow_run_id,
            name=info.name,
            state=_flow_state_name(info.state),
            created_at=info.created_at,
            ended_at=info.ended_at or None,
            last_seq=info.last_seq,
            nodes=tuple(TaskCounts.from_proto(n) for n in info.nodes),
        )

    @property
    def is_terminal(self) -> bool:
        """Whether the flow run has ended (completed, failed or cancelled)."""
        return self.state in _TERMINAL_STATES

    @property
    def total(self) -> int:
        """Task runs created so far (the sum over expanded nodes; grows as maps expand)."""
        return sum(n.total for n in self.nodes if n.total is not None)

    @property
    def completed(self) -> int:
        """Task runs that completed."""
        return sum(n.completed for n in self.nodes)

    @property
    def failed(self) -> int:
        """Task runs that failed or timed out."""
        return sum(n.failed + n.timed_out for n in self.nodes)

    @property
    def finished(self) -> int:
        """Task runs in any final state."""
        return sum(n.finished for n in self.nodes)

    @property
    def duration_s(self) -> float | None:
        """Seconds from submission to end; None while running."""
        return None if self.ended_at is None else self.ended_at - self.created_at


@dataclass(frozen=True)
class WorkerInfo:
    """A connected worker, as returned by ``list_workers``.

    Attributes:
        worker_id: The worker's id.
        hostname: Host it runs on.
        pid: Its process id there.
        capacity: ``{resource: amount}`` it offers (cpu in CPUs, memory in bytes).
        allocated: ``{resource: amount}`` allocated to attempts running on it.
        running: Attempts leased to it now.
        task_names: Tasks it offers, sorted.
        cpu_percent: Machine CPU use from its last heartbeat, 0-100.
        memory_available: Available memory from its last heartbeat, bytes.
        last_seen_at: Coordinator time of its last RPC, seconds since the Unix epoch.
        heartbeat_age_s: Seconds since then, measured by the coordinator.
    """

    worker_id: str
    hostname: str
    pid: int
    capacity: dict[str, float]
    allocated: dict[str, float]
    running: int
    task_names: tuple[str, ...]
    cpu_percent: float
    memory_available: float
    last_seen_at: float
    heartbeat_age_s: float

    @classmethod
    def from_proto(cls, info: pb.WorkerInfo) -> WorkerInfo:
        """Decode a ``WorkerInfo`` message."""
        return cls(
            worker_id=info.worker_id,
            hostname=info.hostname,
            pid=info.pid,
            capacity=dict(info.capacity.amounts),
            allocated=dict(info.allocated.amounts),
            running=info.running,
            task_names=tuple(info.task_names),
            cpu_percent=info.cpu_percent,
            memory_available=info.memory_available,
            last_seen_at=info.last_seen_at,
            heartbeat_age_s=info.heartbeat_age_seconds,
        )


@dataclass(frozen=True)
class Backoff:
    """Retry policy for RPCs that fail with ``UNAVAILABLE``.

    The n-th retry (from 0) waits ``d/2 + uniform(0, d/2)`` seconds with
    ``d = min(cap_s, base_s * 2**n)``.

    Attributes:
        base_s: First delay bound, seconds. Default 0.05 s.
        cap_s: Largest delay, seconds. Default 2 s.
        give_up_s: Stop retrying this long after the first failure, seconds.
            Default 30 s. A caller's own timeout, when shorter, wins.
    """

    base_s: float = 0.05
    cap_s: float = 2.0
    give_up_s: float = 30.0

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (from 0), seconds."""
        bound = min(self.cap_s, self.base_s * 2.0 ** min(retry, 64))
        return bound / 2 + rng.uniform(0, bound / 2)


class _RetryBudget:
    """Decides whether a failed RPC is retried and after how long.

    Args:
        backoff: The policy.
        deadline: The caller's deadline on the ``time.monotonic`` clock, or None.
        rng: Jitter source.
    """

    def __init__(self, backoff: Backoff, deadline: float | None, rng: random.Random) -> None:
        self._backoff = backoff
        self._rng = rng
        self.deadline = deadline
        #: True once a retry was refused because the caller's deadline came first.
        self.deadline_hit = False
        self._retries = 0
        self._give_up_at = math.inf

    def delay_s(self, code: grpc.StatusCode | None) -> float | None:
        """Seconds to wait before retrying after ``code``; None to give up."""
        if code is not _UNAVAILABLE:
            return None
        now = time.monotonic()
        if self._retries == 0:
            self._give_up_at = now + self._backoff.give_up_s
        retry_at = now + self._backoff.delay_s(self._retries, self._rng)
        if self.deadline is not None and retry_at > self.deadline:
            self.deadline_hit = True
            return None
        if retry_at > self._give_up_at:
            return None
        self._retries += 1
        return retry_at - now

    def reset(self) -> None:
        """Start over after progress (a watch stream delivered events)."""
        self._retries = 0
        self._give_up_at = math.inf

    def error(self, exc: grpc.RpcError, flow_run_id: str | None = None) -> Exception:
        """The fleetflow error a caller sees for a call that is not retried."""
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        deadline_passed = self.deadline is not None and time.monotonic() >= self.deadline
        if self.deadline_hit or (code is grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed):
            return TimeoutError(f"timed out talking to the coordinator ({code.name}: {details})")
        return _translate(code, details, flow_run_id)


# ----------------------------------------------------------------- shared helpers


def _flow_state_name(state: int) -> str:
    try:
        return common_pb2.FlowRunState.Name(state).removeprefix("FLOW_RUN_STATE_")
    except ValueError:
        return f"UNKNOWN_{state}"


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return time.monotonic() + timeout


def _remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _rpc_timeout_s(base_s: float, deadline: float | None) -> float:
    """The gRPC timeout of one call: ``base_s``, shortened to the caller's deadline (+1 s)."""
    remaining = _remaining_s(deadline)
    return base_s if remaining is None else max(0.05, min(base_s, remaining + 1.0))


def _submit_request(
    flow: Flow | common_pb2.FlowSpec,
    args: tuple,
    params: dict[str, Any],
    idempotency_key: str | None,
    priority: int = 0,
) -> pb.SubmitFlowRunRequest:
    if isinstance(flow, common_pb2.FlowSpec):
        if args or params:
            raise TypeError("submit(spec): parameters are already recorded in a FlowSpec")
        spec = flow
    elif isinstance(flow, Flow):
        spec = flow.build(*args, **params)
    else:
        raise TypeError(f"submit() needs a @flow function or a FlowSpec, got {type(flow).__name__}")
    if priority:
        spec = common_pb2.FlowSpec.FromString(spec.SerializeToString())
        spec.priority = priority
    # A key is always sent so that retrying a submission whose answer was lost
    # returns the same flow run instead of starting a second one.
    return pb.SubmitFlowRunRequest(spec=spec, idempotency_key=idempotency_key or uuid.uuid4().hex)


def _get_request(flow_run_id: str, *, include_result: bool, wait_s: float) -> pb.GetFlowRunRequest:
    return pb.GetFlowRunRequest(
        flow_run_id=flow_run_id, include_result=include_result, wait_seconds=wait_s
    )


def _poll_wait_s(deadline: float | None) -> float:
    remaining = _remaining_s(deadline)
    return _LONG_POLL_S if remaining is None else min(remaining, _LONG_POLL_S)


def _poll_done(
    response: pb.GetFlowRunResponse, flow_run_id: str, deadline: float | None, elapsed_s: float
) -> float | None:
    """After one long poll: None when the run ended, else the pause before the next, seconds.

    Raises:
        TimeoutError: the caller's deadline passed while the run goes on.
    """
    if _flow_state_name(response.info.state) in _TERMINAL_STATES:
        return None
    remaining = _remaining_s(deadline)
    if remaining is not None and remaining <= 0:
        raise TimeoutError(f"flow run {flow_run_id} is still running")
    # A coordinator that answers a long poll early must not make us spin.
    pause = max(0.0, _MIN_POLL_GAP_S - elapsed_s)
    return pause if remaining is None else min(pause, remaining)


def _decode_value(value: common_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "pickled":
        return loads(value.pickled)
    if kind == "list":
        return [loads(item) for item in value.list.items]
    return None


def _decode_outcome(response: pb.GetFlowRunResponse) -> Any:
    """The result of an ended flow run, or the exception it ended with, raised."""
    info = response.info
    state = _flow_state_name(info.state)
    if state == "COMPLETED":
        return _decode_value(response.result)
    if state == "CANCELLED":
        raise FlowRunCancelled(f"flow run {info.flow_run_id} ({info.name}) was cancelled")
    error = response.error
    if not (error.type or error.message or error.pickled):
        raise FlowRunFailed(f"flow run {info.flow_run_id} ({info.name}) ended in state {state}")
    exc = exception_from_error(error)
    where = f" in task {response.error_task_name!r}" if response.error_task_name else ""
    exc.add_note(f"Raised{where} of flow run {info.flow_run_id} ({info.name}).")
    raise exc


def _new_events(response: pb.WatchFlowRunResponse, last_seq: int) -> list[FlowEvent]:
    """Decode a batch, dropping events at or before ``last_seq`` (already delivered)."""
    return [FlowEvent.from_proto(e) for e in response.events if e.seq > last_seq]


def _stream_ended(flow_run_id: str) -> RPCError:
    return RPCError(
        "UNAVAILABLE", f"the event stream of flow run {flow_run_id} ended before its last event"
    )


def _translate(code: grpc.StatusCode, details: str, flow_run_id: str | None) -> Exception:
    """Map a failed RPC's status to a fleetflow error.

    ``flow_run_id`` is None for SubmitFlowRun and ListFlowRuns, where
    INVALID_ARGUMENT means a rejected flow spec.
    """
    if code is grpc.StatusCode.NOT_FOUND and flow_run_id is not None:
        return FlowRunNotFound(f"no flow run with id {flow_run_id!r} ({details})")
    if code is grpc.StatusCode.INVALID_ARGUMENT and flow_run_id is None:
        return InvalidFlowError(details)
    return RPCError(code.name, details)


# ---------------------------------------------------------------------- sync API


class FlowRunHandle(Generic[R]):
    """A submitted flow run, bound to the :class:`Client` that made it.

    Attributes:
        id: The flow run id.
        created: False when an idempotency key matched an existing flow run.
    """

    def __init__(self, client: Client, flow_run_id: str, created: bool = True) -> None:
        self._client = client
        self.id = flow_run_id
        self.created = created

    def __repr__(self) -> str:
        return f"<FlowRunHandle {self.id}>"

    def get(self) -> FlowRunInfo:
        """Fetch the flow run's current state and counts; see :meth:`Client.get`."""
        return self._client.get(self.id)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the flow run ends; see :meth:`Client.wait`."""
        return self._client.wait(self.id, timeout=timeout)

    def result(self, timeout: float | None = None) -> R:
        """Block until the flow run ends and return its result; see :meth:`Client.result`."""
        return self._client.result(self.id, timeout=timeout)

    def cancel(self) -> int:
        """Cancel this flow run; returns how many task runs were cancelled."""
        return self._client.cancel(self.id)

    def events(self, after_seq: int = 0) -> Iterator[FlowEvent]:
        """Iterate over the flow run's events; see :meth:`Client.watch`."""
        return self._client.watch(self.id, after_seq=after_seq)


class Client:
    """Blocking client of a coordinator.

    Example::

        with Client("127.0.0.1:50051") as client:
            run = client.submit(my_flow, n=10)
            print(run.result(timeout=600))

    Args:
        address: The coordinator's ``host:port``.
        backoff: Retry policy for ``UNAVAILABLE``; default :class:`Backoff()`.
        credentials: TLS and token; default from ``FLEETFLOW_TLS_CA``,
            ``FLEETFLOW_TOKEN`` and the like (:class:`~fleetflow.credentials.Credentials`).

    Raises:
        fleetflow.credentials.CredentialsError: a credential file is unusable,
            or a token would travel in plaintext beyond loopback.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        backoff: Backoff | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.address = address
        self._backoff = backoff or Backoff()
        self._rng = random.Random()
        self.credentials = credentials or Credentials.from_options()
        self._channel = self.credentials.channel(address, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.CoordinatorServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; open iterators from :meth:`watch` end with an error."""
        self._channel.close()

    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        flow_run_id: str | None = None,
        deadline: float | None = None,
        timeout_s: float = _RPC_TIMEOUT_S,
    ) -> Any:
        budget = _RetryBudget(self._backoff, deadline, self._rng)
        while True:
            try:
                return method(request, timeout=_rpc_timeout_s(timeout_s, deadline))
            except grpc.RpcError as exc:
                delay = budget.delay_s(exc.code())  # type: ignore[attr-defined]
                if delay is None:
                    raise budget.error(exc, flow_run_id) from exc
            time.sleep(delay)

    def submit(
        self,
        flow: Flow[..., R] | common_pb2.FlowSpec,
        *args: Any,
        idempotency_key: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> FlowRunHandle[R]:
        """Record ``flow`` with these parameters and submit it.

        Args:
            flow: A ``@flow`` function (or a ``FlowSpec`` built before).
            *args: Positional flow parameters.
            idempotency_key: Resubmitting with the same key returns the same
                flow run. A random key is used when omitted, so that retries
                of this call never start a second run.
            priority: Higher is leased first among ready task runs (default 0).
            **params: Keyword flow parameters.

        Returns:
            A handle on the new (or matched) flow run.

        Raises:
            TypeError: the parameters do not fit the flow (raised while recording).
            InvalidFlowError: the coordinator rejected the flow graph.
            RPCError: the coordinator failed otherwise or stayed unavailable.
        """
        request = _submit_request(flow, args, params, idempotency_key, priority)
        response = self._call(self._stub.SubmitFlowRun, request)
        return FlowRunHandle(self, response.flow_run_id, response.created)

    def handle(self, flow_run_id: str) -> FlowRunHandle[Any]:
        """A handle on an existing flow run (not checked until used)."""
        return FlowRunHandle(self, flow_run_id, created=False)

    def get(self, flow_run_id: str, *, wait_s: float = 0.0) -> FlowRunInfo:
        """Fetch a flow run's state and task run counts.

        Args:
            flow_run_id: The flow run.
            wait_s: Long poll: answer once the run has ended or after this
                many seconds, whichever comes first. Default 0 (at once).

        Raises:
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        request = _get_request(flow_run_id, include_result=False, wait_s=wait_s)
        response = self._call(
            self._stub.GetFlowRun,
            request,
            flow_run_id=flow_run_id,
            timeout_s=wait_s + _LONG_POLL_GRACE_S if wait_s else _RPC_TIMEOUT_S,
        )
        return FlowRunInfo.from_proto(response.info)

    def list_flow_runs(self) -> list[FlowRunInfo]:
        """All flow runs the coordinator knows, in its order.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = self._call(self._stub.ListFlowRuns, pb.ListFlowRunsRequest())
        return [FlowRunInfo.from_proto(info) for info in response.flow_runs]

    def list_workers(self) -> list[WorkerInfo]:
        """The workers connected to the coordinator now.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = self._call(self._stub.ListWorkers, pb.ListWorkersRequest())
        return [WorkerInfo.from_proto(info) for info in response.workers]

    def cancel(self, flow_run_id: str) -> int:
        """Cancel a flow run; nothing new starts once this returns.

        Returns:
            How many task runs were cancelled.

        Raises:
            FlowRunNotFound: no such flow run.
            RPCError: the coordinator failed or stayed unavailable.
        """
        request = pb.CancelFlowRunRequest(flow_run_id=flow_run_id)
        return self._call(self._stub.CancelFlowRun, request, flow_run_id=flow_run_id).cancelled

    def cancel_task_run(self, task_run_id: int) -> int:
        """Cancel one task run; its dependents end UPSTREAM_FAILED. Returns 1 or 0."""
        request = pb.CancelTaskRunRequest(task_run_id=task_run_id)
        return self._call(self._stub.CancelTaskRun, request).cancelled

    def get_task_run(self, task_run_id: int) -> TaskRunInfo:
        """One task run with its attempt history (worker, times, outcome, error)."""
        request = pb.GetTaskRunRequest(task_run_id=task_run_id)
        return TaskRunInfo.from_proto(self._call(self._stub.GetTaskRun, request))

    def get_flow_run_stats(self, flow_run_id: str) -> FlowRunStats:
        """Measured usage per task against its request (with advice), and time per state.

        Raises:
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        request = pb.GetFlowRunStatsRequest(flow_run_id=flow_run_id)
        response = self._call(self._stub.GetFlowRunStats, request, flow_run_id=flow_run_id)
        return FlowRunStats.from_proto(response)

    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        """Allow at most ``limit`` task runs tagged ``tag`` at once (None removes it)."""
        request = pb.SetConcurrencyLimitRequest(tag=tag, limit=-1 if limit is None else limit)
        self._call(self._stub.SetConcurrencyLimit, request)

    def demand(self) -> list[DemandInfo]:
        """Queued demand per worker pool and resource shape (what an autoscaler adds)."""
        response = self._call(self._stub.GetDemand, pb.GetDemandRequest())
        return [DemandInfo.from_proto(d) for d in response.demand]

    def prune(self, older_than_s: float) -> list[str]:
        """Delete finished flow runs that ended more than ``older_than_s`` seconds ago."""
        request = pb.PruneFlowRunsRequest(older_than_seconds=older_than_s)
        return list(self._call(self._stub.PruneFlowRuns, request).pruned_flow_run_ids)

    def _poll_until_ended(
        self, flow_run_id: str, timeout: float | None, *, include_result: bool
    ) -> pb.GetFlowRunResponse:
        deadline = _deadline(timeout)
        while True:
            wait_s = _poll_wait_s(deadline)
            started = time.monotonic()
            response = self._call(
                self._stub.GetFlowRun,
                _get_request(flow_run_id, include_result=include_result, wait_s=wait_s),
                flow_run_id=flow_run_id,
                deadline=deadline,
                timeout_s=wait_s + _LONG_POLL_GRACE_S,
            )
            pause = _poll_done(response, flow_run_id, deadline, time.monotonic() - started)
            if pause is None:
                return response
            time.sleep(pause)

    def wait(self, flow_run_id: str, timeout: float | None = None) -> str:
        """Block until a flow run ends.

        Args:
            flow_run_id: The flow run.
            timeout: Give up after this many seconds; None waits forever.

        Returns:
            The final state: ``"COMPLETED"``, ``"FAILED"`` or ``"CANCELLED"``.

        Raises:
            TimeoutError: the run did not end within ``timeout``.
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = self._poll_until_ended(flow_run_id, timeout, include_result=False)
        return _flow_state_name(response.info.state)

    def result(self, flow_run_id: str, timeout: float | None = None) -> Any:
        """Block until a flow run ends and return its result.

        Args:
            flow_run_id: The flow run.
            timeout: Give up after this many seconds; None waits forever.

        Returns:
            The flow's return value (a map output is a list, in input order).

        Raises:
            Exception: the flow run failed: its first task failure, re-raised
                as the original exception type with the remote traceback as a
                note (or :class:`~fleetflow.RemoteTaskError` when that type
                cannot be unpickled here).
            FlowRunFailed: the flow run failed without a task error.
            FlowRunCancelled: the flow run was cancelled.
            TimeoutError: the run did not end within ``timeout``.
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = self._poll_until_ended(flow_run_id, timeout, include_result=True)
        return _decode_outcome(response)

    def watch(self, flow_run_id: str, after_seq: int = 0) -> Iterator[FlowEvent]:
        """Iterate over a flow run's events, live, until its terminal event.

        The stream reconnects by itself when the coordinator is unavailable,
        resuming after the last event it yielded, so no event is lost or
        repeated.

        Args:
            flow_run_id: The flow run.
            after_seq: Start after this event ``seq``; 0 replays from the start.

        Yields:
            Events in ``seq`` order; the last one is terminal.

        Raises:
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        last_seq = after_seq
        budget = _RetryBudget(self._backoff, None, self._rng)
        while True:
            request = pb.WatchFlowRunRequest(flow_run_id=flow_run_id, after_seq=last_seq)
            call = self._stub.WatchFlowRun(request)
            failure: grpc.RpcError | None = None
            try:
                for response in call:
                    budget.reset()
                    for event in _new_events(response, last_seq):
                        last_seq = event.seq
                        yield event
                        if event.is_terminal:
                            return
            except grpc.RpcError as exc:
                failure = exc
            finally:
                call.cancel()
            code = failure.code() if failure is not None else _UNAVAILABLE  # type: ignore[attr-defined]
            delay = budget.delay_s(code)
            if delay is None:
                if failure is None:
                    raise _stream_ended(flow_run_id)
                raise budget.error(failure, flow_run_id) from failure
            time.sleep(delay)


# --------------------------------------------------------------------- async API


class AsyncFlowRunHandle(Generic[R]):
    """A submitted flow run, bound to the :class:`AsyncClient` that made it.

    Attributes:
        id: The flow run id.
        created: False when an idempotency key matched an existing flow run.
    """

    def __init__(self, client: AsyncClient, flow_run_id: str, created: bool = True) -> None:
        self._client = client
        self.id = flow_run_id
        self.created = created

    def __repr__(self) -> str:
        return f"<AsyncFlowRunHandle {self.id}>"

    async def get(self) -> FlowRunInfo:
        """Fetch the flow run's current state and counts; see :meth:`AsyncClient.get`."""
        return await self._client.get(self.id)

    async def wait(self, timeout: float | None = None) -> str:
        """Wait until the flow run ends; see :meth:`AsyncClient.wait`."""
        return await self._client.wait(self.id, timeout=timeout)

    async def result(self, timeout: float | None = None) -> R:
        """Wait until the flow run ends and return its result; see :meth:`AsyncClient.result`."""
        return await self._client.result(self.id, timeout=timeout)

    async def cancel(self) -> int:
        """Cancel this flow run; returns how many task runs were cancelled."""
        return await self._client.cancel(self.id)

    def events(self, after_seq: int = 0) -> AsyncIterator[FlowEvent]:
        """Iterate over the flow run's events; see :meth:`AsyncClient.watch`."""
        return self._client.watch(self.id, after_seq=after_seq)


class AsyncClient:
    """asyncio client of a coordinator; the same methods as :class:`Client`, awaited.

    The channel is opened on first use, inside the running event loop.

    Example::

        async with AsyncClient("127.0.0.1:50051") as client:
            run = await client.submit(my_flow, n=10)
            async for event in run.events():
                print(event.kind)
            print(await run.result())

    Args:
        address: The coordinator's ``host:port``.
        backoff: Retry policy for ``UNAVAILABLE``; default :class:`Backoff()`.
        credentials: TLS and token; default from ``FLEETFLOW_TLS_CA``,
            ``FLEETFLOW_TOKEN`` and the like (:class:`~fleetflow.credentials.Credentials`).

    Raises:
        fleetflow.credentials.CredentialsError: a credential file is unusable,
            or a token would travel in plaintext beyond loopback.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        backoff: Backoff | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.address = address
        self._backoff = backoff or Backoff()
        self._rng = random.Random()
        self.credentials = credentials or Credentials.from_options()
        self.credentials.channel_credentials(address)  # fail now, not at the first call
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.CoordinatorServiceStub | None = None

    def __repr__(self) -> str:
        return f"<AsyncClient {self.address}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (if it was opened)."""
        channel, self._channel, self._stub_ = self._channel, None, None
        if channel is not None:
            await channel.close()

    @property
    def _stub(self) -> pb_grpc.CoordinatorServiceStub:
        if self._stub_ is None:
            self._channel = self.credentials.aio_channel(self.address, _CHANNEL_OPTIONS)
            self._stub_ = pb_grpc.CoordinatorServiceStub(self._channel)
        return self._stub_

    async def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        flow_run_id: str | None = None,
        deadline: float | None = None,
        timeout_s: float = _RPC_TIMEOUT_S,
    ) -> Any:
        budget = _RetryBudget(self._backoff, deadline, self._rng)
        while True:
            try:
                return await method(request, timeout=_rpc_timeout_s(timeout_s, deadline))
            except grpc.aio.AioRpcError as exc:
                delay = budget.delay_s(exc.code())
                if delay is None:
                    raise budget.error(exc, flow_run_id) from exc
            await asyncio.sleep(delay)

    async def submit(
        self,
        flow: Flow[..., R] | common_pb2.FlowSpec,
        *args: Any,
        idempotency_key: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> AsyncFlowRunHandle[R]:
        """Record ``flow`` with these parameters and submit it; see :meth:`Client.submit`."""
        request = _submit_request(flow, args, params, idempotency_key, priority)
        response = await self._call(self._stub.SubmitFlowRun, request)
        return AsyncFlowRunHandle(self, response.flow_run_id, response.created)

    def handle(self, flow_run_id: str) -> AsyncFlowRunHandle[Any]:
        """A handle on an existing flow run (not checked until used)."""
        return AsyncFlowRunHandle(self, flow_run_id, created=False)

    async def get(self, flow_run_id: str, *, wait_s: float = 0.0) -> FlowRunInfo:
        """Fetch a flow run's state and task run counts; see :meth:`Client.get`."""
        request = _get_request(flow_run_id, include_result=False, wait_s=wait_s)
        response = await self._call(
            self._stub.GetFlowRun,
            request,
            flow_run_id=flow_run_id,
            timeout_s=wait_s + _LONG_POLL_GRACE_S if wait_s else _RPC_TIMEOUT_S,
        )
        return FlowRunInfo.from_proto(response.info)

    async def list_flow_runs(self) -> list[FlowRunInfo]:
        """All flow runs the coordinator knows; see :meth:`Client.list_flow_runs`."""
        response = await self._call(self._stub.ListFlowRuns, pb.ListFlowRunsRequest())
        return [FlowRunInfo.from_proto(info) for info in response.flow_runs]

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers connected to the coordinator now; see :meth:`Client.list_workers`."""
        response = await self._call(self._stub.ListWorkers, pb.ListWorkersRequest())
        return [WorkerInfo.from_proto(info) for info in response.workers]

    async def cancel(self, flow_run_id: str) -> int:
        """Cancel a flow run; see :meth:`Client.cancel`."""
        request = pb.CancelFlowRunRequest(flow_run_id=flow_run_id)
        response = await self._call(self._stub.CancelFlowRun, request, flow_run_id=flow_run_id)
        return response.cancelled

    async def get_task_run(self, task_run_id: int) -> TaskRunInfo:
        """One task run with its attempt history; see :meth:`Client.get_task_run`."""
        request = pb.GetTaskRunRequest(task_run_id=task_run_id)
        return TaskRunInfo.from_proto(await self._call(self._stub.GetTaskRun, request))

    async def get_flow_run_stats(self, flow_run_id: str) -> FlowRunStats:
        """Usage against requests and time per state; see :meth:`Client.get_flow_run_stats`."""
        request = pb.GetFlowRunStatsRequest(flow_run_id=flow_run_id)
        response = await self._call(self._stub.GetFlowRunStats, request, flow_run_id=flow_run_id)
        return FlowRunStats.from_proto(response)

    async def _poll_until_ended(
        self, flow_run_id: str, timeout: float | None, *, include_result: bool
    ) -> pb.GetFlowRunResponse:
        deadline = _deadline(timeout)
        while True:
            wait_s = _poll_wait_s(deadline)
            started = time.monotonic()
            response = await self._call(
                self._stub.GetFlowRun,
                _get_request(flow_run_id, include_result=include_result, wait_s=wait_s),
                flow_run_id=flow_run_id,
                deadline=deadline,
                timeout_s=wait_s + _LONG_POLL_GRACE_S,
            )
            pause = _poll_done(response, flow_run_id, deadline, time.monotonic() - started)
            if pause is None:
                return response
            await asyncio.sleep(pause)

    async def wait(self, flow_run_id: str, timeout: float | None = None) -> str:
        """Wait until a flow run ends and return its final state; see :meth:`Client.wait`."""
        response = await self._poll_until_ended(flow_run_id, timeout, include_result=False)
        return _flow_state_name(response.info.state)

    async def result(self, flow_run_id: str, timeout: float | None = None) -> Any:
        """Wait until a flow run ends and return its result; see :meth:`Client.result`."""
        response = await self._poll_until_ended(flow_run_id, timeout, include_result=True)
        return _decode_outcome(response)

    async def watch(self, flow_run_id: str, after_seq: int = 0) -> AsyncIterator[FlowEvent]:
        """Iterate over a flow run's events until its terminal one; see :meth:`Client.watch`."""
        last_seq = after_seq
        budget = _RetryBudget(self._backoff, None, self._rng)
        while True:
            request = pb.WatchFlowRunRequest(flow_run_id=flow_run_id, after_seq=last_seq)
            call = self._stub.WatchFlowRun(request)
            failure: grpc.aio.AioRpcError | None = None
            try:
                async for response in call:
                    budget.reset()
                    for event in _new_events(response, last_seq):
                        last_seq = event.seq
                        yield event
                        if event.is_terminal:
                            return
            except grpc.aio.AioRpcError as exc:
                failure = exc
            finally:
                call.cancel()
            delay = budget.delay_s(failure.code() if failure is not None else _UNAVAILABLE)
            if delay is None:
                if failure is None:
                    raise _stream_ended(flow_run_id)
                raise budget.error(failure, flow_run_id) from failure
            await asyncio.sleep(delay)
