"""Snapshots the coordinator returns: flow runs with per-node counts, and workers."""

from __future__ import annotations

from dataclasses import dataclass

from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb

__all__ = ["FlowRunInfo", "TaskCounts", "TERMINAL_STATES", "WorkerInfo", "flow_state_name"]

#: Flow run states that never change.
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


def flow_state_name(state: int) -> str:
    """The name of a ``FlowRunState`` value without its prefix, e.g. ``"RUNNING"``.

    Args:
        state: The enum value as sent by the coordinator.

    Returns:
        The name, or ``"UNKNOWN_<n>"`` for a value this client does not know.
    """
    try:
        return common_pb2.FlowRunState.Name(state).removeprefix("FLOW_RUN_STATE_")
    except ValueError:
        return f"UNKNOWN_{state}"


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
    #: How a node that ended before it expanded (no task runs) ended:
    #: ``"UPSTREAM_FAILED"``, ``"CANCELLED"`` or ``"FAILED"``; None otherwise.
    unexpanded_end: str | None = None
    #: Why its queued task runs cannot be scheduled now (no connected worker
    #: offers the task, or none is large enough); "" when nothing says so.
    unschedulable_reason: str = ""

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
            unexpanded_end=(
                common_pb2.TaskRunState.Name(counts.unexpanded_end).removeprefix("TASK_RUN_STATE_")
                if counts.unexpanded_end
                else None
            ),
            unschedulable_reason=counts.unschedulable_reason,
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
            state=flow_state_name(info.state),
            created_at=info.created_at,
            ended_at=info.ended_at or None,
            last_seq=info.last_seq,
            nodes=tuple(TaskCounts.from_proto(n) for n in info.nodes),
        )

    @property
    def is_terminal(self) -> bool:
        """Whether the flow run has ended (completed, failed or cancelled)."""
        return self.state in TERMINAL_STATES

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
    def upstream_failed(self) -> int:
        """Task runs that can never run because an input failed or was cancelled."""
        return sum(n.upstream_failed for n in self.nodes)

    @property
    def cancelled(self) -> int:
        """Task runs that were cancelled."""
        return sum(n.cancelled for n in self.nodes)

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
        gpus: The GPUs it offers, one ``"ID: MODEL (MEMORY)"`` line each.
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
    gpus: tuple[str, ...] = ()

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
            gpus=tuple(info.gpus),
        )
