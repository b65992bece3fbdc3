"""Flow run statistics returned by ``Client.get_flow_run_stats``.

Requested against measured usage per task (median and p95 over completed
attempts) with right-sizing advice, and where the flow run's time went.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetflow.api.v1 import coordinator_service_pb2 as pb

__all__ = ["FlowRunStats", "TaskUsage", "ResourceAdvice", "TimeInState", "Quantiles"]


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Median, p95 and maximum over measured attempts."""

    median: float
    p95: float
    max: float

    @classmethod
    def from_proto(cls, message: pb.UsageQuantiles) -> Quantiles:
        """Decode a UsageQuantiles message."""
        return cls(median=message.median, p95=message.p95, max=message.max)


@dataclass(frozen=True, slots=True)
class ResourceAdvice:
    """A right-sizing suggestion for one resource of one task.

    Attributes:
        resource: ``"cpu"``, ``"memory"``, ``"gpu"`` or ``"gpu_memory"``.
        requested: The request (CPUs, bytes, devices); 0 when none.
        used_p95: p95 of what attempts used (cores busy; peak bytes; GPU
            utilisation percent for ``gpu``).
        suggested: The suggested request.
        message: E.g. ``"parse_module requests memory 2GiB, p95 used 180MiB: consider 256MiB"``.
    """

    resource: str
    requested: float
    used_p95: float
    suggested: float
    message: str


@dataclass(frozen=True, slots=True)
class TaskUsage:
    """What the completed attempts of one task used, against its request.

    Attributes:
        node: The node in the flow run (0 in fleet-wide rows).
        task_name: The task.
        requested: Its request (cpu in CPUs, memory in bytes, custom counts).
        measured_attempts: Completed attempts measured (plain ``def`` tasks only).
        cpu_cores: CPU seconds / attempt seconds: the cores it kept busy.
        cpu_seconds: CPU seconds per attempt.
        peak_memory_bytes: Peak resident memory of the attempt's process.
        duration_seconds: Lease-to-outcome seconds per attempt.
        advice: Right-sizing suggestions (empty when the request fits).
        gpu_measured_attempts: Completed attempts that held GPU devices and
            whose GPU use was measured (NVML).
        peak_gpu_memory_bytes: Peak GPU memory of those attempts' processes.
        gpu_utilization_percent: Their mean SM utilisation, percent.
    """

    node: int
    task_name: str
    requested: dict[str, float]
    measured_attempts: int
    cpu_cores: Quantiles
    cpu_seconds: Quantiles
    peak_memory_bytes: Quantiles
    duration_seconds: Quantiles
    advice: tuple[ResourceAdvice, ...]
    gpu_measured_attempts: int = 0
    peak_gpu_memory_bytes: Quantiles | None = None
    gpu_utilization_percent: Quantiles | None = None

    @classmethod
    def from_proto(cls, message: pb.TaskUsage) -> TaskUsage:
        """Decode a TaskUsage message."""
        return cls(
            node=message.node,
            task_name=message.task_name,
            requested=dict(message.requested.amounts),
            measured_attempts=message.measured_attempts,
            cpu_cores=Quantiles.from_proto(message.cpu_cores),
            cpu_seconds=Quantiles.from_proto(message.cpu_seconds),
            peak_memory_bytes=Quantiles.from_proto(message.peak_memory_bytes),
            duration_seconds=Quantiles.from_proto(message.duration_seconds),
            advice=tuple(
                ResourceAdvice(a.resource, a.requested, a.used_p95, a.suggested, a.message)
                for a in message.advice
            ),
            gpu_measured_attempts=message.gpu_measured_attempts,
            peak_gpu_memory_bytes=Quantiles.from_proto(message.peak_gpu_memory_bytes),
            gpu_utilization_percent=Quantiles.from_proto(message.gpu_utilization_percent),
        )


@dataclass(frozen=True, slots=True)
class TimeInState:
    """Task-run seconds a flow run's task runs spent in each state (summed over them).

    Attributes:
        pending_s: Waiting for upstream task runs.
        queued_s: Ready, waiting for a worker with room.
        running_s: Leased to a worker, until its outcome.
        awaiting_retry_s: Waiting for a retry's delay.
    """

    pending_s: float
    queued_s: float
    running_s: float
    awaiting_retry_s: float

    @classmethod
    def from_proto(cls, message: pb.TimeInState) -> TimeInState:
        """Decode a TimeInState message."""
        return cls(
            pending_s=message.pending_seconds,
            queued_s=message.queued_seconds,
            running_s=message.running_seconds,
            awaiting_retry_s=message.awaiting_retry_seconds,
        )

    @property
    def total_s(self) -> float:
        """The sum of the four."""
        return self.pending_s + self.queued_s + self.running_s + self.awaiting_retry_s


@dataclass(frozen=True, slots=True)
class FlowRunStats:
    """Measured usage and time in state of one flow run.

    Attributes:
        flow_run_id: The flow run.
        tasks: One row per node with measured attempts, in node order.
        fleet_tasks: The same task names over every flow run the coordinator
            saw since it started.
        time: Where the flow run's time went.
        folded_seq: Events folded into ``time``.
        stored_bytes: Bytes the flow run keeps in the result store (its
            payloads over the inline limit; deleted with the flow run).
        stored_objects: Distinct objects they are in.
        stored_largest: The largest stored payload, bytes.
    """

    flow_run_id: str
    tasks: tuple[TaskUsage, ...]
    fleet_tasks: tuple[TaskUsage, ...]
    time: TimeInState
    folded_seq: int
    stored_bytes: int = 0
    stored_objects: int = 0
    stored_largest: int = 0

    @classmethod
    def from_proto(cls, message: pb.GetFlowRunStatsResponse) -> FlowRunStats:
        """Decode a GetFlowRunStatsResponse."""
        return cls(
            flow_run_id=message.flow_run_id,
            tasks=tuple(TaskUsage.from_proto(t) for t in message.tasks),
            fleet_tasks=tuple(TaskUsage.from_proto(t) for t in message.fleet_tasks),
            time=TimeInState.from_proto(message.time),
            folded_seq=message.folded_seq,
            stored_bytes=message.stored.bytes,
            stored_objects=message.stored.objects,
            stored_largest=message.stored.largest,
        )

    @property
    def advice(self) -> list[ResourceAdvice]:
        """Every suggestion of this flow run's tasks."""
        return [a for t in self.tasks for a in t.advice]
