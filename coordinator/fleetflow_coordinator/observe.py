"""Read-only views of the coordinator's state: the dashboard's JSON and the metrics' inputs.

Nothing here changes the core. What the core already counts (task runs per
state per node, ``node.counts``) is read as is. What it does not keep (the
slowest attempts, recent failures with tracebacks, throughput over time, queue
wait) is folded incrementally from each flow run's event log, the same log
``WatchFlowRun`` streams: :meth:`Observer.catch_up` reads only the events
appended since its last call, at most a budget of them per call, so neither a
request nor a fold ever walks a flow run's task runs. Building a snapshot
costs O(flow runs shown + nodes + workers).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from fleetflow_coordinator.core import EventKind, FlowRunState, Scheduler, TaskRunState
from fleetflow_coordinator.core.model import EventRecord, FlowRun, NodeRecord, WorkerRecord
from fleetflow_coordinator.usage import UsageBook

__all__ = [
    "AttemptLog",
    "Observer",
    "FlowDigest",
    "EventSink",
    "flow_summary",
    "flow_detail",
    "worker_view",
    "shape_label",
    "series",
    "recent_rate",
    "TIME_STATES",
]

_attempt_log = structlog.get_logger("fleetflow_coordinator.attempts")

#: Slowest finished attempts kept per flow run.
TOP_SLOWEST = 10
#: Longest-running attempts shown per flow run.
TOP_RUNNING = 5
#: Most recent failures (with tracebacks) kept per flow run.
MAX_FAILURES = 20
#: Tracebacks are cut to their last this-many characters.
TRACEBACK_CHARS = 6000
#: Events folded per :meth:`Observer.catch_up` call, so one call never blocks
#: the event loop for long (a 100,000-task flow run logs about 300,000 events).
FOLD_BUDGET = 50_000
#: Points in a throughput series.
SERIES_POINTS = 120
#: Shortest time axis of a running flow run's throughput chart, seconds.
MIN_SERIES_S = 60
#: Seconds of fleet-wide throughput kept.
FLEET_WINDOW_S = 600
#: Flow runs listed in a snapshot, newest first.
FLOW_LIST_LIMIT = 100

_STATE_NAMES = {int(s): s.name.lower() for s in TaskRunState}
_FINISHED = (
    TaskRunState.COMPLETED,
    TaskRunState.FAILED,
    TaskRunState.UPSTREAM_FAILED,
    TaskRunState.CANCELLED,
    TaskRunState.TIMED_OUT,
)
_FAILED = (TaskRunState.FAILED, TaskRunState.TIMED_OUT)

#: The states time is accounted in, per flow run (``FlowDigest.time_in_state``).
TIME_STATES = ("pending", "queued", "running", "awaiting_retry")
_PENDING, _SCHEDULED, _RUNNING, _AWAITING = range(4)
#: {event kind: the state it moves a task run to (an index of TIME_STATES),
#: _ENDS when it leaves them all, _LOST when its attempt was lost (a new state
#: follows), _EXPANDS for new PENDING task runs}
_ENDS, _LOST, _EXPANDS = -1, -2, -3
_TIME_TARGET = {
    int(EventKind.NODE_EXPANDED): _EXPANDS,
    int(EventKind.TASK_RUN_SCHEDULED): _SCHEDULED,
    int(EventKind.TASK_RUN_STARTED): _RUNNING,
    int(EventKind.TASK_RUN_RETRYING): _AWAITING,
    int(EventKind.TASK_RUN_COMPLETED): _ENDS,
    int(EventKind.TASK_RUN_FAILED): _ENDS,
    int(EventKind.TASK_RUN_TIMED_OUT): _ENDS,
    int(EventKind.TASK_RUN_CANCELLED): _ENDS,
    int(EventKind.TASK_RUN_UPSTREAM_FAILED): _ENDS,
    int(EventKind.TASK_RUN_LEASE_EXPIRED): _LOST,
}
#: Events on a RUNNING task run that the fold does not close an attempt on.
_DROPS_RUNNING = frozenset(
    {
        int(EventKind.TASK_RUN_SCHEDULED),
        int(EventKind.TASK_RUN_CANCELLED),
        int(EventKind.TASK_RUN_UPSTREAM_FAILED),
    }
)


class EventSink(Protocol):
    """Receives what a fold learns (the metrics implement it)."""

    def event(self, kind: EventKind) -> None:
        """One event was appended to some flow run's log."""

    def started(self, task_name: str, queue_wait_s: float | None) -> None:
        """An attempt was leased, after waiting ``queue_wait_s`` seconds in its queue."""

    def finished(self, flow_run_id: str, attempt: dict[str, Any]) -> None:
        """An attempt ended.

        ``attempt`` holds task_name, task_run_id, index, attempt, worker_id,
        outcome (completed, failed, retrying, lost), duration_s and error_type.
        """


class AttemptLog:
    """An :class:`EventSink` that writes one log line per ended attempt, then forwards.

    The line is the attempt's canonical summary: ``flow_run_id``,
    ``task_run_id``, ``attempt``, ``worker_id``, task, outcome and duration.
    Completed attempts log at debug level, failed, retried and lost ones at
    info, so a default coordinator log shows every failure with its ids.

    Args:
        inner: The sink to forward every call to (the metrics).
    """

    def __init__(self, inner: EventSink) -> None:
        self.inner = inner

    def event(self, kind: EventKind) -> None:
        """Forward."""
        self.inner.event(kind)

    def started(self, task_name: str, queue_wait_s: float | None) -> None:
        """Forward."""
        self.inner.started(task_name, queue_wait_s)

    def finished(self, flow_run_id: str, attempt: dict[str, Any]) -> None:
        """Log the attempt's summary line, then forward."""
        self.inner.finished(flow_run_id, attempt)
        outcome = attempt["outcome"]
        if outcome == "completed":
            if not _attempt_log.is_enabled_for(logging.DEBUG):
                return  # the common case: skip building a line nobody keeps
            emit = _attempt_log.debug
        else:
            emit = _attempt_log.info
        emit(
            "task_run_attempt_ended",
            flow_run_id=flow_run_id,
            task_run_id=attempt["task_run_id"],
            attempt=attempt["attempt"],
            worker_id=attempt["worker_id"],
            task=attempt["task_name"],
            index=attempt["index"],
            outcome=outcome,
            duration_s=round(attempt["duration_s"], 6),
            error_type=attempt["error_type"] or None,
        )


class _NullSink:
    def event(self, kind: EventKind) -> None:
        pass

    def started(self, task_name: str, queue_wait_s: float | None) -> None:
        pass

    def finished(self, flow_run_id: str, attempt: dict[str, Any]) -> None:
        pass


@dataclass(slots=True)
class _Running:
    attempt: int
    started_at: float
    worker_id: str
    node: int
    task_name: str
    index: int


@dataclass(slots=True)
class FlowDigest:
    """What the dashboard shows about one flow run beyond its counters.

    Attributes:
        flow_run_id: The flow run.
        cursor: Events of the flow run's log folded so far.
    """

    flow_run_id: str = ""
    cursor: int = 0
    #: {task_run_id: time it was last SCHEDULED}; entries leave when leased.
    scheduled_at: dict[int, float] = field(default_factory=dict)
    #: {task_run_id: the attempt running now}
    running: dict[int, _Running] = field(default_factory=dict)
    #: min-heap of (duration_s, seq, attempt record): the TOP_SLOWEST finished attempts.
    slowest: list[tuple[float, int, dict]] = field(default_factory=list)
    #: The MAX_FAILURES most recent failures, oldest first.
    failures: deque[dict] = field(default_factory=lambda: deque(maxlen=MAX_FAILURES))
    n_failures: int = 0
    n_retries: int = 0
    n_lost: int = 0
    n_late: int = 0
    #: {node index: why it cannot be scheduled (latest report)}
    unschedulable: dict[int, str] = field(default_factory=dict)
    #: {second since epoch: [completed, failed]} of finished task runs.
    buckets: dict[int, list[int]] = field(default_factory=dict)
    first_time: float = 0.0
    last_time: float = 0.0
    #: Task runs in each waiting/running state now, as folded: [pending,
    #: scheduled, running, awaiting_retry] (see :data:`TIME_STATES`).
    live: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    #: Task-run seconds spent in each of those states up to ``last_time``.
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    #: Task runs AWAITING_RETRY now.
    awaiting: set[int] = field(default_factory=set)
    #: Task runs whose attempt was lost and that have no new state yet.
    limbo: set[int] = field(default_factory=set)

    def fold(
        self,
        flow: FlowRun,
        budget: int,
        sink: EventSink,
        on_finish: Callable[[int, bool], None] | None = None,
    ) -> int:
        """Fold up to ``budget`` new events of ``flow``; return how many were folded."""
        events = flow.events
        end = min(len(events), self.cursor + budget)
        for event in events[self.cursor : end]:
            sink.event(event.kind)
            self._fold_one(event, sink, on_finish)
        folded = end - self.cursor
        self.cursor = end
        return folded

    def _fold_one(
        self, e: EventRecord, sink: EventSink, on_finish: Callable[[int, bool], None] | None
    ) -> None:
        kind = e.kind
        if not self.first_time:
            self.first_time = e.time
        self._account(e)
        self.last_time = max(self.last_time, e.time)
        if kind == EventKind.TASK_RUN_SCHEDULED:
            self.scheduled_at[e.task_run_id] = e.time
        elif kind == EventKind.TASK_RUN_STARTED:
            queued = self.scheduled_at.pop(e.task_run_id, None)
            self.running[e.task_run_id] = _Running(
                e.attempt, e.time, e.worker_id, e.node, e.task_name, e.index
            )
            sink.started(e.task_name, None if queued is None else max(0.0, e.time - queued))
        elif kind == EventKind.TASK_RUN_COMPLETED:
            self._end_attempt(e, "completed", sink)
            self._count(e.time, failed=False, on_finish=on_finish)
        elif kind == EventKind.TASK_RUN_RETRYING:
            self.n_retries += 1
            self._failure(e, self._end_attempt(e, "retrying", sink))
        elif kind == EventKind.TASK_RUN_FAILED or kind == EventKind.TASK_RUN_TIMED_OUT:
            self._failure(e, self._end_attempt(e, "failed", sink))
            self._count(e.time, failed=True, on_finish=on_finish)
        elif kind == EventKind.TASK_RUN_LEASE_EXPIRED:
            self.n_lost += 1
            self._failure(e, self._end_attempt(e, "lost", sink))
        elif kind == EventKind.TASK_RUN_UPSTREAM_FAILED:
            self.scheduled_at.pop(e.task_run_id, None)
        elif kind == EventKind.NODE_FAILED:
            self._failure(e, "")
        elif kind == EventKind.TASK_RUN_UNSCHEDULABLE:
            self.unschedulable[e.node] = e.message
        elif kind == EventKind.LATE_RESULT_REJECTED:
            self.n_late += 1

    def _account(self, e: EventRecord) -> None:
        """Integrate time in state up to ``e``, then move the task run ``e`` is about.

        Runs before the other bookkeeping of ``e``: where a task run comes
        from is read from ``scheduled_at``, ``running``, ``awaiting`` and
        ``limbo`` (none of them: PENDING) as they were before the event.
        """
        live = self.live
        last = self.last_time
        if e.time > last and last:
            pending, scheduled, running, awaiting = live
            if pending or scheduled or running or awaiting:
                elapsed = e.time - last
                seconds = self.seconds
                seconds[0] += pending * elapsed
                seconds[1] += scheduled * elapsed
                seconds[2] += running * elapsed
                seconds[3] += awaiting * elapsed
        kind = e.kind
        target = _TIME_TARGET.get(kind)
        if target is None:
            return
        if target == _EXPANDS:
            live[_PENDING] += e.count
            return
        tid = e.task_run_id
        if tid in self.running:
            live[_RUNNING] -= 1
            if kind in _DROPS_RUNNING:
                # Its attempt ended without an event the fold closes it on (a
                # reported infrastructure failure, a cancellation): forget it.
                del self.running[tid]
        elif tid in self.scheduled_at:
            live[_SCHEDULED] -= 1
            if target < 0:
                del self.scheduled_at[tid]
        elif tid in self.awaiting:
            self.awaiting.discard(tid)
            live[_AWAITING] -= 1
        elif tid in self.limbo:
            self.limbo.discard(tid)
        else:
            live[_PENDING] -= 1
        if target >= 0:
            live[target] += 1
            if target == _AWAITING:
                self.awaiting.add(tid)
        elif target == _LOST:
            self.limbo.add(tid)

    def time_in_state(self, now: float, ended: bool) -> dict[str, float]:
        """Task-run seconds per state, up to ``now`` (or the last event once ``ended``)."""
        seconds = list(self.seconds)
        if not ended and self.last_time and now > self.last_time:
            for i in range(4):
                seconds[i] += self.live[i] * (now - self.last_time)
        return dict(zip(TIME_STATES, seconds, strict=True))

    def _end_attempt(self, e: EventRecord, outcome: str, sink: EventSink) -> str:
        """Close the attempt ``e`` is about; return the worker that ran it ("" if unknown)."""
        run = self.running.get(e.task_run_id)
        if run is None or run.attempt != e.attempt:
            return e.worker_id
        del self.running[e.task_run_id]
        duration = max(0.0, e.time - run.started_at)
        record = {
            "task_run_id": e.task_run_id,
            "task_name": run.task_name,
            "node": run.node,
            "index": run.index,
            "attempt": run.attempt,
            "worker_id": run.worker_id,
            "started_at": run.started_at,
            "duration_s": duration,
            "outcome": outcome,
            "error_type": getattr(e.error, "type", "") or "",
        }
        sink.finished(self.flow_run_id, record)
        entry = (duration, e.seq, record)
        if len(self.slowest) < TOP_SLOWEST:
            heapq.heappush(self.slowest, entry)
        elif duration > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, entry)
        return run.worker_id

    def _failure(self, e: EventRecord, worker_id: str) -> None:
        self.n_failures += 1
        error = e.error
        traceback = getattr(error, "traceback", "") or ""
        if len(traceback) > TRACEBACK_CHARS:
            traceback = "...\n" + traceback[-TRACEBACK_CHARS:]
        self.failures.append(
            {
                "seq": e.seq,
                "time": e.time,
                "kind": e.kind.name,
                "task_name": e.task_name,
                "node": e.node,
                "index": e.index,
                "task_run_id": e.task_run_id,
                "attempt": e.attempt,
                "worker_id": worker_id or e.worker_id,
                "type": getattr(error, "type", "") or "",
                "message": (getattr(error, "message", "") or e.message)[:2000],
                "traceback": traceback,
            }
        )

    def _count(
        self, time: float, *, failed: bool, on_finish: Callable[[int, bool], None] | None
    ) -> None:
        second = int(time)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = [0, 0]
        bucket[1 if failed else 0] += 1
        if on_finish is not None:
            on_finish(second, failed)


class Observer:
    """Folds every flow run's new events and builds the dashboard's snapshots.

    Args:
        core: Returns the scheduler to read (called on every use, so the edge
            may replace it, e.g. after recovery from a store).
        clock: Current time, seconds since the epoch.
        sink: Told about every folded event (the metrics); optional.
        usage: Measured usage per task (:mod:`fleetflow_coordinator.usage`),
            shown with each flow run; optional.
    """

    def __init__(
        self,
        core: Callable[[], Scheduler],
        clock: Callable[[], float],
        sink: EventSink | None = None,
        usage: UsageBook | None = None,
    ) -> None:
        self._core = core
        self.clock = clock
        self.sink: EventSink = sink or _NullSink()
        self.usage = usage
        #: {flow_run_id: FlowDigest}
        self.digests: dict[str, FlowDigest] = {}
        #: {second since epoch: [completed, failed]}, the last FLEET_WINDOW_S seconds.
        self.fleet_buckets: dict[int, list[int]] = {}

    @property
    def core(self) -> Scheduler:
        """The scheduler being observed."""
        return self._core()

    def catch_up(self, budget: int = FOLD_BUDGET) -> int:
        """Fold events appended since the last call, at most ``budget``; return how many."""
        core = self.core
        digests = self.digests
        folded = 0
        for flow_run_id, flow in core.flows.items():
            digest = digests.get(flow_run_id)
            if digest is None:
                digest = digests[flow_run_id] = FlowDigest(flow_run_id)
            if digest.cursor < len(flow.events) and folded < budget:
                folded += digest.fold(flow, budget - folded, self.sink, self._fleet_finish)
        if len(digests) > len(core.flows):
            for gone in [f for f in digests if f not in core.flows]:
                del digests[gone]
        self._prune_fleet()
        return folded

    def fold_flow(self, flow_run_id: str, budget: int = FOLD_BUDGET) -> bool:
        """Fold up to ``budget`` new events of one flow run; True once it is caught up."""
        flow = self.core.flows.get(flow_run_id)
        if flow is None:
            return True
        digest = self.digests.get(flow_run_id)
        if digest is None:
            digest = self.digests[flow_run_id] = FlowDigest(flow_run_id)
        digest.fold(flow, budget, self.sink, self._fleet_finish)
        flows = self.core.flows
        if len(self.digests) > len(flows):
            for gone in [f for f in self.digests if f not in flows]:
                del self.digests[gone]
        return digest.cursor >= len(flow.events)

    def _fleet_finish(self, second: int, failed: bool) -> None:
        bucket = self.fleet_buckets.get(second)
        if bucket is None:
            bucket = self.fleet_buckets[second] = [0, 0]
        bucket[1 if failed else 0] += 1

    def _prune_fleet(self) -> None:
        if len(self.fleet_buckets) > FLEET_WINDOW_S:
            horizon = int(self.clock()) - FLEET_WINDOW_S
            for second in [s for s in self.fleet_buckets if s < horizon]:
                del self.fleet_buckets[second]

    def digest(self, flow_run_id: str) -> FlowDigest:
        """The digest of a flow run (empty if not folded yet)."""
        return self.digests.get(flow_run_id) or FlowDigest()

    # ------------------------------------------------------------- snapshots

    def pick_flow(self, requested: str | None) -> FlowRun | None:
        """The flow run to show: the requested one, else the newest running, else the newest."""
        flows = self.core.flows
        if requested:
            return flows.get(requested)
        newest = None
        for flow in itertools.islice(reversed(flows.values()), FLOW_LIST_LIMIT):
            if newest is None:
                newest = flow
            if flow.state == FlowRunState.RUNNING:
                return flow
        return newest

    def overview(self, flow_run_id: str | None = None) -> dict[str, Any]:
        """Everything one dashboard update shows, as JSON-ready data.

        Args:
            flow_run_id: The flow run to detail; None picks one (see :meth:`pick_flow`).
        """
        core = self.core
        now = self.clock()
        flows = core.flows
        by_state: dict[str, int] = {}
        for flow in flows.values():
            name = flow.state.name
            by_state[name] = by_state.get(name, 0) + 1
        listed = [
            flow_summary(f, now)
            for f in itertools.islice(reversed(flows.values()), FLOW_LIST_LIMIT)
        ]
        selected = self.pick_flow(flow_run_id)
        workers = [worker_view(w, now) for w in core.workers.values()]
        return {
            "fleet": {
                "flow_runs": by_state,
                "flow_runs_total": len(flows),
                "workers": len(workers),
                "running": sum(w["running"] for w in workers),
                "throughput": series(self.fleet_buckets, now - 119, now, points=120),
                "rate_per_s": recent_rate(self.fleet_buckets, now),
            },
            "flows": listed,
            "selected": selected.id if selected is not None else None,
            "requested": flow_run_id,
            "flow": (
                flow_detail(
                    selected,
                    self.digest(selected.id),
                    now,
                    core.workers.values(),
                    usage=self.usage,
                )
                if selected is not None
                else None
            ),
            "workers": workers,
        }


# ------------------------------------------------------------------ views


def _finished(counts: list[int]) -> int:
    return sum(counts[s] for s in _FINISHED)


def flow_summary(flow: FlowRun, now: float) -> dict[str, Any]:
    """One row of the flow run list: state, progress and duration (O(nodes))."""
    total = finished = completed = failed = running = 0
    expanded = True
    for node in flow.nodes:
        c = node.counts
        if node.expanded:
            total += len(node.children)
        elif not node.terminal:
            expanded = False
        finished += _finished(c)
        completed += c[TaskRunState.COMPLETED]
        failed += c[TaskRunState.FAILED] + c[TaskRunState.TIMED_OUT]
        running += c[TaskRunState.RUNNING]
    end = flow.ended_at if flow.terminal else now
    return {
        "id": flow.id,
        "name": flow.name,
        "state": flow.state.name,
        "created_at": flow.created_at,
        "ended_at": flow.ended_at or None,
        "duration_s": max(0.0, end - flow.created_at),
        "nodes": len(flow.nodes),
        "total": total,
        "total_known": expanded,
        "finished": finished,
        "completed": completed,
        "failed": failed,
        "running": running,
        "events": len(flow.events),
    }


def shape_label(resources: dict[str, float]) -> str:
    """``{"cpu": 1, "memory": 268435456}`` -> ``"cpu=1,memory=256Mi"``."""
    parts = []
    for name, amount in sorted(resources.items()):
        if name == "memory":
            parts.append(f"{name}={_bytes_label(amount)}")
        else:
            parts.append(f"{name}={amount:g}")
    return ",".join(parts)


def _bytes_label(amount: float) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= size and amount % size == 0:
            return f"{amount / size:g}{unit}"
    return f"{amount:g}"


def node_view(node: NodeRecord) -> dict[str, Any]:
    """One node's counters: a 100,000-item map is one row."""
    c = node.counts
    return {
        "node": node.index,
        "task_name": node.task_name,
        "map": node.is_map,
        "total": len(node.children) if node.expanded else None,
        "finished": _finished(c),
        "counts": {_STATE_NAMES[s]: c[s] for s in _STATE_NAMES},
        "resources": shape_label(node.resources),
        "retries": node.retries,
        "terminal": node.terminal,
    }


def _fits(node: NodeRecord, workers: Iterable[WorkerRecord]) -> bool:
    """Whether some connected worker offers the node's task and could ever fit it."""
    for worker in workers:
        if node.task_name in worker.task_names and all(
            worker.capacity.get(r, 0.0) + 1e-9 >= a for r, a in node.resources.items()
        ):
            return True
    return False


def flow_detail(
    flow: FlowRun,
    digest: FlowDigest,
    now: float,
    core_workers: Iterable[WorkerRecord] | None = None,
    *,
    usage: UsageBook | None = None,
) -> dict[str, Any]:
    """A flow run in detail: per-node counters, slowest attempts, failures, throughput.

    Args:
        flow: The flow run.
        digest: What was folded from its event log.
        now: Current time, seconds since the epoch.
        core_workers: The connected workers; an unschedulable warning is shown
            only while none of them could run the node. None shows every one.
        usage: Measured usage; adds requested-against-used rows with advice.
    """
    summary = flow_summary(flow, now)
    running = heapq.nsmallest(
        TOP_RUNNING, digest.running.items(), key=lambda item: item[1].started_at
    )
    first_error = None
    if flow.first_error is not None:
        task_name, error, message = flow.first_error
        first_error = {
            "task_name": task_name,
            "type": getattr(error, "type", "") or "",
            "message": (getattr(error, "message", "") or message)[:2000],
            "traceback": (getattr(error, "traceback", "") or "")[-TRACEBACK_CHARS:],
        }
    start = digest.first_time or flow.created_at
    # A running flow run's chart spans at least MIN_SERIES_S, so it fills from the left.
    end = flow.ended_at if flow.terminal else max(now, start + MIN_SERIES_S)
    workers = list(core_workers) if core_workers is not None else []
    return {
        **summary,
        "node_counts": [node_view(n) for n in flow.nodes],
        "slowest": [entry[2] for entry in sorted(digest.slowest, reverse=True)],
        "running_longest": [
            {
                "task_run_id": task_run_id,
                "task_name": r.task_name,
                "node": r.node,
                "index": r.index,
                "attempt": r.attempt,
                "worker_id": r.worker_id,
                "started_at": r.started_at,
                "running_s": max(0.0, now - r.started_at),
            }
            for task_run_id, r in running
        ],
        "failures": list(reversed(digest.failures)),
        "failures_total": digest.n_failures,
        "retries": digest.n_retries,
        "lost_attempts": digest.n_lost,
        "late_results": digest.n_late,
        "first_error": first_error,
        "unschedulable": [
            {"node": n, "message": m}
            for n, m in sorted(digest.unschedulable.items())
            if flow.nodes[n].counts[TaskRunState.SCHEDULED]
            and (core_workers is None or not _fits(flow.nodes[n], workers))
        ],
        "throughput": series(digest.buckets, start, end, points=SERIES_POINTS),
        "rate_per_s": recent_rate(digest.buckets, now, since=start),
        "folded": digest.cursor >= len(flow.events),
        "time_in_state": digest.time_in_state(now, flow.terminal),
        "usage": [] if usage is None else [stats.view() for stats in usage.flow(flow.id)],
    }


def worker_view(worker: WorkerRecord, now: float) -> dict[str, Any]:
    """A worker as its heartbeats and the coordinator's allocations describe it."""
    return {
        "worker_id": worker.worker_id,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "capacity": dict(worker.capacity),
        "allocated": {k: v for k, v in worker.allocated.items() if k in worker.capacity or v},
        "running": len(worker.running),
        "task_names": sorted(worker.task_names),
        "cpu_percent": worker.cpu_percent,
        "memory_available": worker.memory_available,
        "last_seen": worker.last_seen,
        "heartbeat_age_s": max(0.0, now - worker.last_seen),
    }


def series(
    buckets: dict[int, list[int]], start: float, end: float, *, points: int
) -> dict[str, Any]:
    """Per-second counts folded into at most ``points`` windows between ``start`` and ``end``.

    Returns:
        ``{"start": s, "step_s": w, "completed": [...], "failed": [...]}``;
        each list holds task runs finished per window of ``w`` seconds.
    """
    first = int(math.floor(start))
    span = max(1, int(math.floor(end)) - first + 1)
    step = max(1, math.ceil(span / points))
    n = max(1, math.ceil(span / step))
    completed = [0] * n
    failed = [0] * n
    items: Iterable[tuple[int, list[int]]] = buckets.items()
    for second, (ok, bad) in items:
        i = (second - first) // step
        if 0 <= i < n:
            completed[i] += ok
            failed[i] += bad
    return {"start": first, "step_s": step, "completed": completed, "failed": failed}


def recent_rate(
    buckets: dict[int, list[int]], now: float, seconds: int = 10, since: float = 0.0
) -> float:
    """Task runs finished per second over the last ``seconds`` whole seconds before ``now``.

    The window starts no earlier than ``since`` (a flow run's start), so a
    young flow run's rate is not diluted by seconds before it existed.
    """
    current = int(now)
    window = max(1, min(seconds, current - int(since)))
    finished = 0
    for second in range(current - window, current):
        bucket = buckets.get(second)
        if bucket is not None:
            finished += bucket[0] + bucket[1]
    return finished / window
