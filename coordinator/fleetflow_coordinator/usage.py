"""Measured usage of task runs against their requests, and right-sizing advice.

Workers measure each attempt of a plain ``def`` task (CPU seconds and the peak
resident memory of the process that ran it) and send both with its outcome.
The gRPC edge hands every accepted, successful outcome to
:meth:`UsageBook.record_outcomes`, which folds it into fixed-size quantile
sketches: one set per (flow run, node) and one per task name across every flow
run. Nothing here touches the pure core; it reads the task run an outcome is
about (node, request, lease time) and keeps its own numbers.

Bounded memory: a :class:`QuantileSketch` keeps about :data:`MAX_BINS`
logarithmic bins at most, whatever the number of values, so a 100,000-task map costs
the same as a 10-task one; flow runs are forgotten when the core prunes them
and at most :data:`MAX_FLOWS` are kept.

The advice rule (also in ``docs/architecture.md``):

* **memory**: suggest ``p95 peak x 1.25``, rounded up to the next of
  64, 96, 128, 192, 256, 384, 512, 768 MiB, 1, 1.5, 2, 3 GiB... (powers of two
  and 1.5 times powers of two, at least 64 MiB). Advise when the request is at
  least twice the suggestion, when the p95 peak is above the request (the
  worker kills a task process at the request plus its margin), or when there is
  no request and the p95 peak is 256 MiB or more.
* **cpu**: per attempt, cores used = CPU seconds / lease-to-outcome seconds.
  Suggest ``p95 x 1.25`` rounded up to a tenth of a CPU below 1, to half a CPU
  above. Advise when the request is at least twice the suggestion (and at
  least 0.25 CPU above it), or when the p95 is above 1.5 times the request,
  and only for tasks whose median attempt lasts :data:`MIN_CPU_ADVICE_S` or
  more (shorter ones are dominated by scheduling overhead).
* **gpu** (attempts that held devices and were measured through NVML):
  suggest ``p95 utilisation x 1.25`` as a share of one device, rounded up to
  a quarter (at least 0.25). Advise when a request of whole devices is at
  least twice that suggestion (``gpu=1`` at 20 % p95: ``gpu=0.25``, four
  attempts share a device), and only for tasks whose median attempt lasts
  :data:`MIN_CPU_ADVICE_S` or more.
* **gpu_memory**: as ``memory``, against a ``gpu_memory`` request and the
  p95 peak GPU memory of the attempt's processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.gpu_usage import AttemptGpuBook, WorkerGpus
from fleetflow_coordinator.usage_sketch import (
    DEFAULT_GAMMA_LOG,
    MAX_BINS,
    RELATIVE_ACCURACY,
    Binned,
    QuantileSketch,
    bin_values,
)

__all__ = [
    "MAX_BINS",
    "RELATIVE_ACCURACY",
    "QuantileSketch",
    "TaskUsageStats",
    "UsageBook",
    "UsageSink",
    "Advice",
    "advise",
    "suggest_memory",
    "suggest_cpu",
    "suggest_gpu",
    "advise_gpu",
    "format_bytes",
    "AttemptGpuBook",
]

#: Flow runs whose usage is kept (oldest forgotten first).
MAX_FLOWS = 2000

#: Memory suggestion = p95 peak x this, rounded up to a "nice" quantity.
MEMORY_HEADROOM = 1.25
#: Smallest memory suggestion, bytes.
MIN_MEMORY_SUGGESTION = 64 * 2**20
#: With no memory request, advise one once the p95 peak reaches this, bytes.
UNREQUESTED_MEMORY_ADVICE = 256 * 2**20
#: CPU suggestion = p95 cores x this, rounded up.
CPU_HEADROOM = 1.25
#: Advise lowering a request that is at least this many times the suggestion.
OVER_REQUEST_FACTOR = 2.0
#: Advise raising a cpu request when the p95 is above the request times this.
CPU_UNDER_FACTOR = 1.5
#: No cpu advice for tasks whose median attempt is shorter than this, seconds.
MIN_CPU_ADVICE_S = 0.5

_SUCCESS = 1  # OutcomeAck ACCEPTED


@dataclass
class TaskUsageStats:
    """What the completed, measured attempts of one task used.

    Attributes:
        task_name: The task.
        node: Its node in the flow run (0 for fleet-wide rows).
        requested: The latest request seen (cpu in CPUs, memory in bytes).
    """

    task_name: str
    node: int = 0
    requested: dict[str, float] = field(default_factory=dict)
    cpu_cores: QuantileSketch = field(default_factory=QuantileSketch)
    cpu_seconds: QuantileSketch = field(default_factory=QuantileSketch)
    peak_memory_bytes: QuantileSketch = field(default_factory=QuantileSketch)
    duration_seconds: QuantileSketch = field(default_factory=QuantileSketch)
    peak_gpu_memory_bytes: QuantileSketch = field(default_factory=QuantileSketch)
    gpu_utilization_percent: QuantileSketch = field(default_factory=QuantileSketch)

    @property
    def gpu_measured(self) -> int:
        """Attempts with measured GPU use folded in."""
        return self.gpu_utilization_percent.count

    def add_gpu(self, peak_bytes: float, util_percent: float) -> None:
        """Fold in one attempt's GPU use."""
        self.peak_gpu_memory_bytes.add(peak_bytes)
        self.gpu_utilization_percent.add(util_percent)

    @property
    def measured(self) -> int:
        """Attempts folded in."""
        return self.peak_memory_bytes.count

    def add(self, cpu_s: float, peak_bytes: float, duration_s: float) -> None:
        """Fold in one attempt."""
        self.cpu_seconds.add(cpu_s)
        self.peak_memory_bytes.add(peak_bytes)
        self.duration_seconds.add(duration_s)
        self.cpu_cores.add(cpu_s / duration_s if duration_s > 0 else 0.0)

    def add_many(
        self, cpu_s: Sequence[float], peak_bytes: Sequence[float], duration_s: Sequence[float]
    ) -> None:
        """Fold in several attempts (parallel sequences); as :meth:`add` for each."""
        self.add_binned(self.bin_many(cpu_s, peak_bytes, duration_s))

    @staticmethod
    def bin_many(
        cpu_s: Sequence[float], peak_bytes: Sequence[float], duration_s: Sequence[float]
    ) -> tuple[Binned, ...]:
        """Bin attempts once for :meth:`add_binned` of several rows (a node's, its task's)."""
        gamma_log = DEFAULT_GAMMA_LOG
        cores = [c / d if d > 0 else 0.0 for c, d in zip(cpu_s, duration_s, strict=True)]
        return tuple(
            bin_values(values, gamma_log) for values in (cpu_s, peak_bytes, duration_s, cores)
        )

    def add_binned(self, binned: tuple[Binned, ...]) -> None:
        """Fold in attempts binned by :meth:`bin_many`; the same as :meth:`add_many` of them."""
        cpu, peak, duration, cores = binned
        self.cpu_seconds.add_binned(cpu)
        self.peak_memory_bytes.add_binned(peak)
        self.duration_seconds.add_binned(duration)
        self.cpu_cores.add_binned(cores)

    def view(self) -> dict[str, Any]:
        """JSON-ready: request, quantiles and advice."""
        return {
            "node": self.node,
            "task_name": self.task_name,
            "requested": dict(self.requested),
            "measured_attempts": self.measured,
            "cpu_cores": self.cpu_cores.summary(),
            "cpu_seconds": self.cpu_seconds.summary(),
            "peak_memory_bytes": self.peak_memory_bytes.summary(),
            "duration_seconds": self.duration_seconds.summary(),
            "gpu_measured_attempts": self.gpu_measured,
            "peak_gpu_memory_bytes": self.peak_gpu_memory_bytes.summary(),
            "gpu_utilization_percent": self.gpu_utilization_percent.summary(),
            "advice": [a.__dict__ for a in advise(self)],
        }


class UsageSink(Protocol):
    """Told about every measured attempt (the metrics implement it).

    A sink may also have ``measured_many(task_name, cpu_s, peak_bytes)``
    (parallel sequences), called instead of :meth:`measured` for each.
    """

    def measured(self, task_name: str, cpu_s: float, peak_bytes: float) -> None:
        """One completed attempt used ``cpu_s`` CPU seconds and peaked at ``peak_bytes``."""


class UsageBook:
    """Measured usage per (flow run, node) and per task name, fed by the gRPC edge.

    Args:
        sink: Also told about every measured attempt (the metrics); optional.
        max_flows: Flow runs kept; the oldest is forgotten beyond.
    """

    def __init__(self, sink: UsageSink | None = None, max_flows: int = MAX_FLOWS) -> None:
        self.sink = sink
        self.max_flows = max_flows
        #: {task_name: stats over every flow run}
        self.by_task: dict[str, TaskUsageStats] = {}
        #: {flow_run_id: {node index: stats}}, oldest flow run first
        self.by_flow: dict[str, dict[int, TaskUsageStats]] = {}
        #: The devices and GPU use of recent attempts, for ``inspect``.
        self.attempt_gpus = AttemptGpuBook()
        #: The GPUs each worker registered, for ``fleetflow workers`` and the dashboard.
        self.worker_gpus = WorkerGpus()
        #: Task names and flow run ids changed (or forgotten) since the last
        #: save (``usage_store.dirty_meta``).
        self.dirty_tasks: set[str] = set()
        self.dirty_flows: set[str] = set()

    def record(
        self,
        flow_run_id: str,
        node: int,
        task_name: str,
        requested: dict[str, float],
        cpu_s: float,
        peak_bytes: float,
        duration_s: float,
    ) -> None:
        """Fold in one completed attempt."""
        self.record_many(
            flow_run_id, node, task_name, requested, [cpu_s], [peak_bytes], [duration_s]
        )

    def record_outcomes(
        self, core: Scheduler, outcomes: Sequence[Any], acks: Sequence[int], now: float
    ) -> int:
        """Fold in the measured, successful outcomes the core just accepted.

        Args:
            core: The scheduler, read only: the task run an outcome is about
                gives its flow run, node, request and lease time.
            outcomes: ``worker_service_pb2.Outcome`` messages as reported.
            acks: The core's answer to each, in order.
            now: Current time, seconds since the epoch.

        Returns:
            How many were folded in.
        """
        #: {id(node): (flow run id, node, cpu seconds, peaks, durations)}
        groups: dict[int, tuple[str, Any, list[float], list[float], list[float]]] = {}
        task_runs = core.task_runs
        # Each field is read once: every read of a message field builds a Python value.
        last_node: Any = None
        group: Any = None
        for outcome, ack in zip(outcomes, acks, strict=False):
            if ack != _SUCCESS:
                continue
            if outcome.gpu_devices:
                self._record_gpu(core, outcome)
            peak = outcome.peak_memory_bytes
            if not 0 < peak < 2**60:
                continue  # unmeasured, or a value no process has (inf, NaN, absurd)
            cpu = outcome.cpu_seconds
            if not 0 <= cpu < 2**40:
                continue
            if outcome.WhichOneof("result") not in ("value", "items"):
                continue
            tr = task_runs.get(outcome.task_run_id)
            if tr is None:
                continue
            node = tr.node
            if node is not last_node:
                group = groups.get(id(node))
                if group is None:
                    group = groups[id(node)] = (tr.flow.id, node, [], [], [])
                last_node = node
            group[2].append(cpu)
            group[3].append(peak)
            # The worker's own timing of the task code; else lease to outcome
            # (which includes time queued behind the other members of a batch).
            duration = outcome.duration_seconds
            group[4].append(duration if 0 < duration < 2**40 else max(0.0, now - tr.leased_at))
        folded = 0
        for flow_run_id, node, cpus, peaks, durations in groups.values():
            self.record_many(
                flow_run_id, node.index, node.task_name, node.resources, cpus, peaks, durations
            )
            folded += len(cpus)
        return folded

    def _record_gpu(self, core: Scheduler, outcome: Any) -> None:
        """Keep an attempt's devices; fold a successful one's measured GPU use in."""
        self.attempt_gpus.record(outcome)
        if not outcome.HasField("gpu_utilization_percent"):
            return
        if outcome.WhichOneof("result") not in ("value", "items", "ref", "stored_items"):
            return
        tr = core.task_runs.get(outcome.task_run_id)
        if tr is None:
            return
        peak, util = outcome.peak_gpu_memory_bytes, outcome.gpu_utilization_percent
        node = tr.node
        self._stats(tr.flow.id, node.index, node.task_name, node.resources).add_gpu(peak, util)
        overall = self.by_task.get(node.task_name)
        if overall is None:
            overall = self.by_task[node.task_name] = TaskUsageStats(node.task_name)
            overall.requested = dict(node.resources)
        overall.add_gpu(peak, util)

    def _stats(
        self, flow_run_id: str, node: int, task_name: str, requested: dict[str, float]
    ) -> TaskUsageStats:
        """The (flow run, node) row, made (and the oldest flow run forgotten) if new."""
        nodes = self.by_flow.get(flow_run_id)
        if nodes is None:
            nodes = self.by_flow[flow_run_id] = {}
            if len(self.by_flow) > self.max_flows:
                oldest = next(iter(self.by_flow))
                del self.by_flow[oldest]
                self.dirty_flows.add(oldest)
        stats = nodes.get(node)
        if stats is None:
            stats = nodes[node] = TaskUsageStats(task_name, node, dict(requested))
        return stats

    def record_many(
        self,
        flow_run_id: str,
        node: int,
        task_name: str,
        requested: dict[str, float],
        cpu_s: Sequence[float],
        peak_bytes: Sequence[float],
        duration_s: Sequence[float],
    ) -> None:
        """Fold in several completed attempts of one node (parallel sequences)."""
        self.dirty_tasks.add(task_name)
        self.dirty_flows.add(flow_run_id)
        if not cpu_s:
            return
        stats = self._stats(flow_run_id, node, task_name, requested)
        binned = TaskUsageStats.bin_many(cpu_s, peak_bytes, duration_s)  # once for both rows
        stats.add_binned(binned)
        overall = self.by_task.get(task_name)
        if overall is None:
            overall = self.by_task[task_name] = TaskUsageStats(task_name)
        overall.requested = dict(requested)
        overall.add_binned(binned)
        sink = self.sink
        if sink is not None:
            measured_many = getattr(sink, "measured_many", None)
            if measured_many is not None:
                measured_many(task_name, cpu_s, peak_bytes)
            else:
                for cpu, peak in zip(cpu_s, peak_bytes, strict=True):
                    sink.measured(task_name, cpu, peak)

    def forget(self, flow_run_ids: Iterable[str]) -> None:
        """Drop pruned flow runs."""
        for flow_run_id in flow_run_ids:
            if self.by_flow.pop(flow_run_id, None) is not None:
                self.dirty_flows.add(flow_run_id)

    def flow(self, flow_run_id: str) -> list[TaskUsageStats]:
        """The flow run's rows, in node order."""
        nodes = self.by_flow.get(flow_run_id) or {}
        return [nodes[i] for i in sorted(nodes)]

    def fleet(self, task_names: Iterable[str]) -> list[TaskUsageStats]:
        """Fleet-wide rows of these task names (those measured), sorted by name."""
        return [self.by_task[n] for n in sorted(set(task_names)) if n in self.by_task]


# ------------------------------------------------------------------- advice


@dataclass(frozen=True)
class Advice:
    """A right-sizing suggestion for one resource of one task.

    Attributes:
        resource: ``"cpu"``, ``"memory"``, ``"gpu"`` or ``"gpu_memory"``.
        requested: The request (CPUs, bytes); 0 when none.
        used_p95: p95 of what the attempts used (cores, peak bytes).
        suggested: The suggested request.
        message: For people.
    """

    resource: str
    requested: float
    used_p95: float
    suggested: float
    message: str


def format_bytes(n: float) -> str:
    """``268435456`` -> ``"256MiB"``; ``1610612736`` -> ``"1.5GiB"`` (binary units)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            text = f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
            return f"{text}{unit}"
    return f"{n:.0f}B"


def suggest_memory(p95_bytes: float) -> float:
    """``p95 x 1.25`` rounded up to 64, 96, 128, 192, 256, 384... MiB (at least 64 MiB)."""
    target = max(p95_bytes * MEMORY_HEADROOM, MIN_MEMORY_SUGGESTION)
    size = float(MIN_MEMORY_SUGGESTION)
    while True:
        if size >= target:
            return size
        if size * 1.5 >= target:
            return size * 1.5
        size *= 2


def suggest_cpu(p95_cores: float) -> float:
    """``p95 x 1.25`` rounded up to 0.1 CPU below 1 CPU, to 0.5 CPU above (at least 0.1)."""
    target = p95_cores * CPU_HEADROOM
    if target <= 1.0:
        return max(0.1, math.ceil(round(target * 10, 6)) / 10)
    return math.ceil(round(target * 2, 6)) / 2


def _cpu_label(cores: float) -> str:
    return f"{cores:.2f}".rstrip("0").rstrip(".") or "0"


#: A share of one device is suggested in steps of this.
GPU_STEP = 0.25


def suggest_gpu(p95_percent: float) -> float:
    """``p95 utilisation x 1.25`` as a share of one device, rounded up to a quarter (>= 0.25)."""
    share = p95_percent / 100.0 * CPU_HEADROOM
    return max(GPU_STEP, math.ceil(round(share / GPU_STEP, 6)) * GPU_STEP)


def advise_gpu(stats: TaskUsageStats) -> list[Advice]:
    """GPU advice: a whole-device request the attempts barely use; gpu_memory as memory."""
    out: list[Advice] = []
    name = stats.task_name
    gpu = stats.requested.get("gpu", 0.0)
    util = stats.gpu_utilization_percent.quantile(0.95)
    if gpu >= 1 and stats.duration_seconds.quantile(0.5) >= MIN_CPU_ADVICE_S:
        suggested = suggest_gpu(util)
        if gpu >= OVER_REQUEST_FACTOR * suggested:
            message = (
                f"{name} requests gpu {_cpu_label(gpu)}, p95 utilisation {util:.0f}%: consider "
                f"gpu={_cpu_label(suggested)} (attempts then share a device)"
            )
            out.append(Advice("gpu", gpu, util, suggested, message))
    requested = stats.requested.get("gpu_memory", 0.0)
    peak = stats.peak_gpu_memory_bytes.quantile(0.95)
    if requested > 0 and peak > 0:
        suggested = suggest_memory(peak)
        if requested >= OVER_REQUEST_FACTOR * suggested or peak > requested:
            message = (
                f"{name} requests gpu_memory {format_bytes(requested)}, p95 used "
                f"{format_bytes(peak)}: consider {format_bytes(suggested)}"
            )
            out.append(Advice("gpu_memory", requested, peak, suggested, message))
    return out


def advise(stats: TaskUsageStats) -> list[Advice]:
    """Right-sizing advice for one task's measured attempts (the module's rule)."""
    out: list[Advice] = advise_gpu(stats) if stats.gpu_measured else []
    if not stats.measured:
        return out
    name = stats.task_name
    memory = stats.requested.get("memory", 0.0)
    peak = stats.peak_memory_bytes.quantile(0.95)
    suggested = suggest_memory(peak)
    if memory > 0 and memory >= OVER_REQUEST_FACTOR * suggested:
        message = (
            f"{name} requests memory {format_bytes(memory)}, p95 used {format_bytes(peak)}: "
            f"consider {format_bytes(suggested)}"
        )
        out.append(Advice("memory", memory, peak, suggested, message))
    elif memory > 0 and peak > memory:
        message = (
            f"{name} requests memory {format_bytes(memory)} but p95 used "
            f"{format_bytes(peak)}: consider {format_bytes(suggested)}"
        )
        out.append(Advice("memory", memory, peak, suggested, message))
    elif memory <= 0 and peak >= UNREQUESTED_MEMORY_ADVICE:
        message = (
            f"{name} requests no memory, p95 used {format_bytes(peak)}: consider "
            f"{format_bytes(suggested)} so that workers are not over-committed"
        )
        out.append(Advice("memory", 0.0, peak, suggested, message))
    cpu = stats.requested.get("cpu", 0.0)
    if cpu > 0 and stats.duration_seconds.quantile(0.5) >= MIN_CPU_ADVICE_S:
        cores = stats.cpu_cores.quantile(0.95)
        suggested = suggest_cpu(cores)
        over = cpu >= OVER_REQUEST_FACTOR * suggested and cpu - suggested >= 0.25
        if over or cores > CPU_UNDER_FACTOR * cpu:
            verb = "requests" if over else "requests only"
            message = (
                f"{name} {verb} cpu {_cpu_label(cpu)}, p95 used {_cpu_label(cores)} cores: "
                f"consider {_cpu_label(suggested)}"
            )
            out.append(Advice("cpu", cpu, cores, suggested, message))
    return out
