"""Prometheus metrics of a coordinator, served as ``/metrics`` on its HTTP port.

Three sources, none of which touches the pure core:

* counters the gRPC edge increments right after a core call (leases granted,
  outcomes by ack, heartbeats, registrations, workers lost);
* counters and histograms fed by folding the flow runs' event logs
  (:class:`fleetflow_coordinator.observe.Observer`): events published, task
  run attempt duration, queue wait;
* gauges read from the core's state at scrape time by a custom collector
  (task runs by state, flow runs by state, queue depth per task and resource
  shape, workers connected, heartbeat age, capacity and allocations).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fleetflow_coordinator.autoscale import pool_demand
from fleetflow_coordinator.core import EventKind, FlowRunState, Scheduler, TaskRunState
from fleetflow_coordinator.observe import shape_label

__all__ = ["Metrics", "CONTENT_TYPE"]

#: The text exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Histogram buckets for task run durations and queue waits, seconds.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"),
)  # fmt: skip

#: Histogram buckets for peak memory, bytes (16 MiB to 64 GiB, doubling).
MEMORY_BUCKETS = (*(float(2**k) for k in range(24, 37)), float("inf"))

_ACK_NAMES = {1: "accepted", 2: "rejected_stale", 3: "rejected_unknown"}


class Metrics:
    """The coordinator's metrics, in a registry of their own.

    Each coordinator (and each test runtime) has its own registry, so several
    can live in one process without clashing in the global default registry.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.leases_granted = Counter(
            "fleetflow_leases_granted", "Task run attempts leased to workers.", registry=r
        )
        self.outcomes = Counter(
            "fleetflow_outcomes_reported",
            "Outcomes reported by workers, by the coordinator's answer.",
            ["ack"],
            registry=r,
        )
        self.heartbeats = Counter(
            "fleetflow_heartbeats_received", "Worker heartbeats received.", registry=r
        )
        self.registrations = Counter(
            "fleetflow_worker_registrations", "RegisterWorker calls accepted.", registry=r
        )
        self.workers_lost = Counter(
            "fleetflow_workers_lost", "Workers declared lost (silent past the TTL).", registry=r
        )
        self.identity_refused = Counter(
            "fleetflow_worker_identity_refused",
            "Worker calls refused for naming a worker another credential registered, by RPC.",
            ["rpc"],
            registry=r,
        )
        self.credential_refused = Counter(
            "fleetflow_rpc_credential_refused",
            "Calls refused for their credential (UNAUTHENTICATED or PERMISSION_DENIED).",
            ["code"],
            registry=r,
        )
        self.flow_runs_submitted = Counter(
            "fleetflow_flow_runs_submitted", "Flow runs accepted.", registry=r
        )
        #: {EventKind: events folded}; exposed as ``fleetflow_events_published``
        #: by a collector, since a labelled Counter's lock costs more than the
        #: event itself (three events per task run).
        self.events_by_kind: dict[EventKind, int] = {}
        self.registry.register(_EventCounter(self.events_by_kind))
        # Per-task-run histograms: observed on the event loop several times per
        # task run, so kept in plain lists (no lock) and exposed at scrape time.
        self.task_duration = LoopHistogram(
            "fleetflow_task_run_duration_seconds",
            "Attempt duration from lease to outcome, by task and outcome "
            "(completed, failed, retrying, lost).",
            ("task", "outcome"),
            DURATION_BUCKETS,
        )
        self.queue_wait = LoopHistogram(
            "fleetflow_task_run_queue_wait_seconds",
            "Seconds a task run waited SCHEDULED before a worker leased it, by task.",
            ("task",),
            DURATION_BUCKETS,
        )
        self.task_cpu = LoopHistogram(
            "fleetflow_task_run_cpu_seconds",
            "CPU seconds of completed attempts, as measured by workers, by task.",
            ("task",),
            DURATION_BUCKETS,
        )
        self.task_memory = LoopHistogram(
            "fleetflow_task_run_peak_memory_bytes",
            "Peak resident memory of completed attempts' processes, by task.",
            ("task",),
            MEMORY_BUCKETS,
        )
        for histogram in (self.task_duration, self.queue_wait, self.task_cpu, self.task_memory):
            r.register(histogram)
        ProcessCollector(registry=r)
        #: {(metric id, label values): child}: ``labels()`` validates and locks on
        #: every call, too slow for once per task run.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _labels(self, metric: Any, *values: str) -> Any:
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # ----------------------------------------------------- edge hooks (servicers)

    def leased(self, n: int) -> None:
        """A LeaseTasks call answered with ``n`` leases."""
        self.leases_granted.inc(n)

    def reported(self, acks: list[int]) -> None:
        """A ReportOutcomes call answered with these acks."""
        for ack, n in collections.Counter(acks).items():
            self._labels(self.outcomes, _ACK_NAMES.get(ack, "unknown")).inc(n)

    def measured(self, task_name: str, cpu_s: float, peak_bytes: float) -> None:
        """A completed attempt's measured usage (usage.UsageBook)."""
        self.task_cpu.observe((task_name,), cpu_s)
        self.task_memory.observe((task_name,), peak_bytes)

    def measured_many(
        self, task_name: str, cpu_s: Sequence[float], peak_bytes: Sequence[float]
    ) -> None:
        """Several completed attempts' usage (parallel sequences); as :meth:`measured` each."""
        self.task_cpu.observe_many((task_name,), cpu_s)
        self.task_memory.observe_many((task_name,), peak_bytes)

    # ------------------------------------------- event sink (observe.Observer)

    def event(self, kind: EventKind) -> None:
        """One event was appended to a flow run's log."""
        counts = self.events_by_kind
        counts[kind] = counts.get(kind, 0) + 1

    def started(self, task_name: str, queue_wait_s: float | None) -> None:
        """An attempt was leased after ``queue_wait_s`` seconds SCHEDULED."""
        if queue_wait_s is not None:
            self.queue_wait.observe((task_name,), queue_wait_s)

    def finished(self, flow_run_id: str, attempt: dict[str, Any]) -> None:
        """An attempt ended."""
        self.task_duration.observe(
            (attempt["task_name"], attempt["outcome"]), attempt["duration_s"]
        )

    def events(self, kind: EventKind, count: int) -> None:
        """``count`` events of one kind were appended."""
        counts = self.events_by_kind
        counts[kind] = counts.get(kind, 0) + count

    def started_many(self, task_name: str, queue_waits_s: list[float]) -> None:
        """Attempts were leased after these waits SCHEDULED."""
        if queue_waits_s:
            self.queue_wait.observe_many((task_name,), queue_waits_s)

    def completed_many(self, flow_run_id: str, task_name: str, ended: list[tuple]) -> None:
        """Attempts completed: ``(task_run_id, attempt, worker_id, index, duration_s)`` each."""
        self.task_duration.observe_many((task_name, "completed"), [e[4] for e in ended])

    # ------------------------------------------------------------- scrape time

    def bind_state(self, runtime: Any) -> None:
        """Register the collector that reads gauges from ``runtime.core`` at scrape time."""
        self.registry.register(_StateCollector(runtime))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class LoopHistogram(Collector):
    """A labelled Prometheus histogram for one thread (the event loop): no locks.

    Exposed like ``prometheus_client.Histogram`` (``_bucket{le}``, ``_sum``,
    ``_count``); the buckets' upper bounds are inclusive, as Prometheus defines.

    Args:
        name: Metric name, without suffixes.
        documentation: HELP text.
        labels: Label names.
        buckets: Increasing upper bounds, the last ``inf``.
    """

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = list(buckets)
        #: {label values: [per-bucket counts..., sum]}
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Count one observation of ``value`` for these label values."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * len(self.bounds) + [0.0]
        series[bisect.bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def observe_many(self, labels: tuple[str, ...], values: Sequence[float]) -> None:
        """Count each of ``values`` (as :meth:`observe` for each)."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * len(self.bounds) + [0.0]
        bounds, where, total = self.bounds, bisect.bisect_left, series[-1]
        for value in values:
            series[where(bounds, value)] += 1
            total += value  # in order, as observe() adds: the same float sum
        series[-1] = total

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for labels, series in self._series.items():
            buckets, running = [], 0
            for bound, n in zip(self.bounds, series[:-1], strict=True):
                running += n
                buckets.append((floatToGoString(bound), running))
            family.add_metric(list(labels), buckets, sum_value=series[-1])
        yield family


class _EventCounter(Collector):
    """``fleetflow_events_published_total{kind}`` from a plain dict, at scrape time."""

    def __init__(self, counts: dict[EventKind, int]) -> None:
        self._counts = counts

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "fleetflow_events_published",
            "Events appended to flow run event logs, by kind.",
            labels=["kind"],
        )
        for kind, n in sorted(self._counts.items()):
            family.add_metric([kind.name], n)
        yield family


class _StateCollector(Collector):
    """Gauges computed from the core's counters when scraped: O(flow runs x nodes + workers)."""

    def __init__(self, runtime: Any) -> None:
        self._rt = runtime

    def describe(self) -> list:
        return []  # computed on collect; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        core: Scheduler = self._rt.core
        now = self._rt.clock()
        task_states = [0] * (max(int(s) for s in TaskRunState) + 1)
        flow_states = dict.fromkeys((s.name for s in FlowRunState), 0)
        #: {(task, shape label): task runs SCHEDULED}
        queued: dict[tuple[str, str], int] = {}
        for flow in core.flows.values():
            flow_states[flow.state.name] += 1
            for node in flow.nodes:
                counts = node.counts
                for state in TaskRunState:
                    task_states[state] += counts[state]
                if not flow.terminal and counts[TaskRunState.SCHEDULED]:
                    key = (node.task_name, shape_label(node.resources))
                    queued[key] = queued.get(key, 0) + counts[TaskRunState.SCHEDULED]

        g = GaugeMetricFamily(
            "fleetflow_task_runs", "Task runs held by the coordinator, by state.", labels=["state"]
        )
        for state in TaskRunState:
            g.add_metric([state.name], task_states[state])
        yield g
        g = GaugeMetricFamily(
            "fleetflow_flow_runs", "Flow runs held by the coordinator, by state.", labels=["state"]
        )
        for name, n in flow_states.items():
            g.add_metric([name], n)
        yield g
        g = GaugeMetricFamily(
            "fleetflow_queue_depth",
            "Task runs ready (SCHEDULED) and waiting for a worker, by task and resource shape.",
            labels=["task", "shape"],
        )
        for (task, shape), n in sorted(queued.items()):
            g.add_metric([task, shape], n)
        yield g
        c = CounterMetricFamily(
            "fleetflow_events_after_end",
            "Events not appended because their flow run had ended (late results on finished "
            "runs...), by kind; each is logged as events_after_flow_run_end.",
            labels=["kind"],
        )
        for kind, n in sorted(core.events_after_end.items()):
            c.add_metric([kind.name], n)
        yield c
        g = GaugeMetricFamily(
            "fleetflow_pool_demand_cpus",
            "CPUs a worker pool's work asks for: ready task runs' cpu requests plus leased "
            "slots' (the autoscaling signal).",
            labels=["pool"],
        )
        for pool, demand in sorted(pool_demand(core).items()):
            g.add_metric([pool], demand.cpus)
        yield g
        yield from self._workers(core, now)
        c = CounterMetricFamily(
            "fleetflow_attempts_expired",
            "Attempts the coordinator expired: no outcome within their timeout plus the grace, "
            "although their worker may still heartbeat (each also an event naming the worker).",
        )
        c.add_metric([], getattr(core, "attempts_expired", 0))
        yield c
        last_commit_s = getattr(self._rt, "last_commit_s", None)
        if last_commit_s is not None:
            g = GaugeMetricFamily(
                "fleetflow_store_last_commit_seconds",
                "Duration of the latest group commit to the store.",
            )
            g.add_metric([], last_commit_s)
            yield g

    @staticmethod
    def _workers(core: Scheduler, now: float) -> Iterator[Any]:
        workers = list(core.workers.values())
        g = GaugeMetricFamily("fleetflow_workers_connected", "Workers registered and alive.")
        g.add_metric([], len(workers))
        yield g
        age = GaugeMetricFamily(
            "fleetflow_worker_heartbeat_age_seconds",
            "Seconds since the worker's last RPC.",
            labels=["worker"],
        )
        running = GaugeMetricFamily(
            "fleetflow_worker_running_task_runs",
            "Attempts leased to the worker.",
            labels=["worker"],
        )
        cpu = GaugeMetricFamily(
            "fleetflow_worker_cpu_percent",
            "Machine CPU use the worker last reported, percent.",
            labels=["worker"],
        )
        memory = GaugeMetricFamily(
            "fleetflow_worker_memory_available_bytes",
            "Available memory the worker last reported.",
            labels=["worker"],
        )
        capacity = GaugeMetricFamily(
            "fleetflow_worker_capacity",
            "Resources the worker offers.",
            labels=["worker", "resource"],
        )
        allocated = GaugeMetricFamily(
            "fleetflow_worker_allocated",
            "Resources allocated to attempts running on the worker.",
            labels=["worker", "resource"],
        )
        for w in workers:
            wid = w.worker_id
            age.add_metric([wid], max(0.0, now - w.last_seen))
            running.add_metric([wid], len(w.running))
            cpu.add_metric([wid], w.cpu_percent)
            memory.add_metric([wid], w.memory_available)
            for resource, amount in sorted(w.capacity.items()):
                capacity.add_metric([wid, resource], amount)
                allocated.add_metric([wid, resource], w.allocated.get(resource, 0.0))
        yield from (age, running, cpu, memory, capacity, allocated)
