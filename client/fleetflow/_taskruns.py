"""Task run views returned by ``Client.get_task_run``: state and attempt history."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.events import TaskErrorInfo

__all__ = [
    "AttemptInfo",
    "ConcurrencyLimitInfo",
    "DemandInfo",
    "TaskRunInfo",
    "TaskRunSummary",
    "TaskRunPage",
]


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """One attempt of a task run.

    Attributes:
        attempt: 1 for the first attempt.
        worker_id: The worker it was leased to ("" if it never started).
        started_at: Seconds since the epoch; 0 if unknown.
        ended_at: Seconds since the epoch; 0 while running.
        outcome: COMPLETED, FAILED, RETRYING, LEASE_EXPIRED, TIMED_OUT,
            CANCELLED or RUNNING.
        error: The error of a failed attempt.
        infrastructure: The attempt ended through the infrastructure (its
            worker was lost), not through the task's code.
        message: Details from the coordinator.
        gpu_devices: The GPU devices it held on its worker (its
            ``CUDA_VISIBLE_DEVICES``); empty when none or not known.
        peak_gpu_memory_bytes: Peak GPU memory of its processes, bytes (0: not measured).
        gpu_utilization_percent: Mean SM utilisation, percent (None: not measured).
    """

    attempt: int
    worker_id: str
    started_at: float
    ended_at: float
    outcome: str
    error: TaskErrorInfo | None
    infrastructure: bool
    message: str
    gpu_devices: tuple[str, ...] = ()
    peak_gpu_memory_bytes: float = 0.0
    gpu_utilization_percent: float | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end, or None while running or unknown."""
        if self.started_at and self.ended_at:
            return self.ended_at - self.started_at
        return None


@dataclass(frozen=True, slots=True)
class TaskRunInfo:
    """A task run and every attempt it made."""

    task_run_id: int
    flow_run_id: str
    node: int
    index: int
    task_name: str
    state: str
    attempt: int
    resources: dict[str, float]
    attempts: list[AttemptInfo]

    @classmethod
    def from_proto(cls, message: pb.GetTaskRunResponse) -> TaskRunInfo:
        """Decode a GetTaskRunResponse."""
        return cls(
            task_run_id=message.task_run_id,
            flow_run_id=message.flow_run_id,
            node=message.node,
            index=message.index,
            task_name=message.task_name,
            state=common_pb2.TaskRunState.Name(message.state).removeprefix("TASK_RUN_STATE_"),
            attempt=message.attempt,
            resources=dict(message.resources.amounts),
            attempts=[
                AttemptInfo(
                    attempt=a.attempt,
                    worker_id=a.worker_id,
                    started_at=a.started_at,
                    ended_at=a.ended_at,
                    outcome=a.outcome,
                    error=TaskErrorInfo(
                        a.error.type, a.error.message, a.error.traceback, tuple(a.error.log_tail)
                    )
                    if a.HasField("error")
                    else None,
                    infrastructure=a.infrastructure,
                    message=a.message,
                    gpu_devices=tuple(a.gpu_devices),
                    peak_gpu_memory_bytes=a.peak_gpu_memory_bytes,
                    gpu_utilization_percent=a.gpu_utilization_percent
                    if a.HasField("gpu_utilization_percent")
                    else None,
                )
                for a in message.attempts
            ],
        )


@dataclass(frozen=True, slots=True)
class DemandInfo:
    """Task runs waiting for a worker, for one pool and resource shape.

    Attributes:
        pool: The worker pool they need.
        resources: What one of them needs (cpu in CPUs, memory in bytes, ...).
        waiting: How many wait now.
        task_names: Which tasks they are.
        unschedulable_reason: Why no connected worker could run them, if so.
        waiting_on_limits: Full concurrency limits some of them wait on,
            e.g. ``["warehouse (2/2 running)"]``.
    """

    pool: str
    resources: dict[str, float]
    waiting: int
    task_names: list[str]
    unschedulable_reason: str
    waiting_on_limits: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, message: pb.Demand) -> DemandInfo:
        """Decode one Demand entry."""
        return cls(
            pool=message.pool,
            resources=dict(message.resources.amounts),
            waiting=message.waiting,
            task_names=list(message.task_names),
            unschedulable_reason=message.unschedulable_reason,
            waiting_on_limits=list(message.waiting_on_limits),
        )


@dataclass(frozen=True, slots=True)
class ConcurrencyLimitInfo:
    """A named concurrency limit and its use now (``Client.list_concurrency_limits``).

    Attributes:
        tag: The tag it limits.
        limit: Task runs with the tag that may run at once.
        running: Task runs with the tag running now.
        waiting: Task runs with the tag queued now.
        source: ``"api"`` (set over the API, stored) or ``"settings"``.
    """

    tag: str
    limit: int
    running: int
    waiting: int
    source: str

    @classmethod
    def from_proto(cls, m: pb.ConcurrencyLimit) -> ConcurrencyLimitInfo:
        """Decode one ConcurrencyLimit."""
        return cls(m.tag, m.limit, m.running, m.waiting, m.source)


def _state_name(state: int) -> str:
    return common_pb2.TaskRunState.Name(state).removeprefix("TASK_RUN_STATE_")


@dataclass(frozen=True, slots=True)
class TaskRunSummary:
    """A task run as one row of a list (``Client.list_task_runs``).

    Attributes:
        task_run_id: Its id (``fleetflow inspect TASK_RUN_ID``).
        node: Its node's index in the flow graph.
        task_name: The task.
        index: The map index (0 for a plain node).
        state: ``"FAILED"``, ``"COMPLETED"``, ...
        attempt: Its latest attempt number.
        worker_id: The worker of its latest attempt ("" if none).
        error: The first line of its last error, ``"Type: message"`` ("" if none).
        input_summary: Where its mapped inputs come from.
        input_item: The pickled literal map item when small (b"" otherwise).
    """

    task_run_id: int
    node: int
    task_name: str
    index: int
    state: str
    attempt: int
    worker_id: str
    error: str
    input_summary: str
    input_item: bytes

    @classmethod
    def from_proto(cls, m: pb.TaskRunSummary) -> TaskRunSummary:
        """Decode a TaskRunSummary message."""
        return cls(
            task_run_id=m.task_run_id,
            node=m.node,
            task_name=m.task_name,
            index=m.index,
            state=_state_name(m.state),
            attempt=m.attempt,
            worker_id=m.worker_id,
            error=m.error,
            input_summary=m.input_summary,
            input_item=m.input_item,
        )


@dataclass(frozen=True, slots=True)
class TaskRunPage:
    """One page of task runs, and how many match over all pages."""

    task_runs: list[TaskRunSummary]
    total: int
    offset: int
