"""The dashboard's fold: what each flow run's event log adds to the core's counters.

What the core already counts (task runs per state per node, ``node.counts``)
is read as is by the views (:mod:`fleetflow_coordinator.observe_views`). What it
does not keep (the slowest attempts, recent failures with tracebacks,
throughput over time, queue wait, time in state) is folded incrementally by
:class:`FlowDigest` from the flow run's event log, the same log
``WatchFlowRun`` streams, at most a budget of events per call. Every folded
event is also told to an :class:`EventSink` (the metrics).
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from fleetflow_coordinator.core import EventKind
from fleetflow_coordinator.core.model import EventRecord, FlowRun

__all__ = [
    "AttemptLog",
    "EventSink",
    "FlowDigest",
    "NullSink",
    "FOLD_BUDGET",
    "MAX_FAILURES",
    "TIME_STATES",
    "TOP_SLOWEST",
    "TRACEBACK_CHARS",
]

_attempt_log = structlog.get_logger("fleetflow_coordinator.attempts")

#: Slowest finished attempts kept per flow run.
TOP_SLOWEST = 10
#: Most recent failures (with tracebacks) kept per flow run.
MAX_FAILURES = 20
#: Tracebacks are cut to their last this-many characters.
TRACEBACK_CHARS = 6000
#: Finished attempts kept per flow run for its task stream (the newest).
STREAM_ATTEMPTS = 5000
#: Events folded per :meth:`Observer.catch_up` call, so one call never blocks
#: the event loop for long (a 100,000-task flow run logs about 300,000 events).
FOLD_BUDGET = 50_000

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
#: NODE_FAILED messages of nodes that did not fail by themselves (see transitions).
_NOT_OWN_NODE_FAILURES = ("upstream task ", "cancelled")
#: Events on a RUNNING task run that the fold does not close an attempt on.
_DROPS_RUNNING = frozenset(
    {
        int(EventKind.TASK_RUN_SCHEDULED),
        int(EventKind.TASK_RUN_CANCELLED),
        int(EventKind.TASK_RUN_UPSTREAM_FAILED),
    }
)
#: Event kinds whose stretches (``EventLog.spans``) are folded without records.
_SPAN_KINDS = frozenset(
    {EventKind.TASK_RUN_SCHEDULED, EventKind.TASK_RUN_STARTED, EventKind.TASK_RUN_COMPLETED}
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

    def events(self, kind: EventKind, count: int) -> None:
        """``count`` events of one kind were appended (as many :meth:`event` calls)."""

    def started_many(self, task_name: str, queue_waits_s: list[float]) -> None:
        """Attempts of one task were leased; the queue waits of those with a known one."""

    def completed_many(self, flow_run_id: str, task_name: str, ended: list[Ended]) -> None:
        """Attempts of one task completed (as :meth:`finished` with outcome completed)."""


#: A completed attempt in :meth:`EventSink.completed_many`: (task_run_id,
#: attempt, worker_id, index, duration_s).
Ended = tuple[int, int, str, int, float]


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

    def events(self, kind: EventKind, count: int) -> None:
        """Forward."""
        self.inner.events(kind, count)

    def started_many(self, task_name: str, queue_waits_s: list[float]) -> None:
        """Forward."""
        self.inner.started_many(task_name, queue_waits_s)

    def completed_many(self, flow_run_id: str, task_name: str, ended: list[Ended]) -> None:
        """Forward, then log a summary line per attempt if debug lines are kept."""
        self.inner.completed_many(flow_run_id, task_name, ended)
        if not _attempt_log.is_enabled_for(logging.DEBUG):
            return  # the common case: skip building lines nobody keeps
        for task_run_id, attempt, worker_id, index, duration_s in ended:
            _attempt_log.debug(
                "task_run_attempt_ended",
                flow_run_id=flow_run_id,
                task_run_id=task_run_id,
                attempt=attempt,
                worker_id=worker_id,
                task=task_name,
                index=index,
                outcome="completed",
                duration_s=round(duration_s, 6),
                error_type=None,
            )

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


class NullSink:
    """An :class:`EventSink` that ignores everything (an observer without metrics)."""

    def event(self, kind: EventKind) -> None:
        """Ignore."""

    def started(self, task_name: str, queue_wait_s: float | None) -> None:
        """Ignore."""

    def finished(self, flow_run_id: str, attempt: dict[str, Any]) -> None:
        """Ignore."""

    def events(self, kind: EventKind, count: int) -> None:
        """Ignore."""

    def started_many(self, task_name: str, queue_waits_s: list[float]) -> None:
        """Ignore."""

    def completed_many(self, flow_run_id: str, task_name: str, ended: list[Ended]) -> None:
        """Ignore."""


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
    #: Entries ever added to ``failures`` (failed, retried and lost attempts, node failures).
    n_failures: int = 0
    #: Task runs that ended FAILED or TIMED_OUT, plus nodes that failed by themselves.
    n_failed: int = 0
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
    #: The newest STREAM_ATTEMPTS finished attempts, oldest first: (worker_id,
    #: task_name, started_at, ended_at, outcome, task_run_id, index).
    stream: deque[tuple[str, str, float, float, str, int, int]] = field(
        default_factory=lambda: deque(maxlen=STREAM_ATTEMPTS)
    )

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
        for item in events.spans(self.cursor, end):
            if item.__class__ is EventRecord:
                sink.event(item.kind)
                self._fold_one(item, sink, on_finish)
            else:
                self._fold_span(item, sink, on_finish)
        folded = end - self.cursor
        self.cursor = end
        return folded

    def _fold_span(
        self, span: tuple, sink: EventSink, on_finish: Callable[[int, bool], None] | None
    ) -> None:
        """Fold a stretch of alike events (``EventLog.spans``) as :meth:`_fold_one` would.

        The common kinds (scheduled, started, completed) are folded per task
        run without making an event record; the rest one record at a time.
        """
        seq, count, kind, time, node, task_name, first, index, attempt, worker_id = span
        event = sink.event
        if kind not in _SPAN_KINDS:
            for i in range(count):
                record = EventRecord(
                    seq + i, kind, time, node, task_name, first + i, index + i, attempt, worker_id
                )
                event(kind)
                self._fold_one(record, sink, on_finish)
            return
        sink.events(kind, count)
        if not self.first_time:
            self.first_time = time
        self._integrate(time)  # every event of the stretch has the same time
        self.last_time = max(self.last_time, time)
        move = self._move
        target = _TIME_TARGET[int(kind)]
        if kind == EventKind.TASK_RUN_SCHEDULED:
            scheduled_at = self.scheduled_at
            for tid in range(first, first + count):
                move(tid, kind, target)
                scheduled_at[tid] = time
        elif kind == EventKind.TASK_RUN_STARTED:
            pop, running, waits = self.scheduled_at.pop, self.running, []
            for i in range(count):
                tid = first + i
                move(tid, kind, target)
                queued = pop(tid, None)
                running[tid] = _Running(attempt, time, worker_id, node, task_name, index + i)
                if queued is not None:
                    waits.append(max(0.0, time - queued))
            sink.started_many(task_name, waits)
        else:  # TASK_RUN_COMPLETED
            self._complete_span(seq, count, time, first, attempt, task_name, sink)
            self._count(time, failed=False, on_finish=on_finish, count=count)

    def _complete_span(
        self,
        seq: int,
        count: int,
        time: float,
        first: int,
        attempt: int,
        task_name: str,
        sink: EventSink,
    ) -> None:
        """Close the attempts of a stretch of completions, as :meth:`_end` does for each.

        Keep the two alike: ``test_folding_runs_whole_gives_what_folding_each_event_gives``
        compares every field of the digest and the metrics.
        """
        move, running, slowest, stream = self._move, self.running, self.slowest, self.stream
        target = _TIME_TARGET[int(EventKind.TASK_RUN_COMPLETED)]
        ended: list[Ended] = []
        for i in range(count):
            tid = first + i
            move(tid, EventKind.TASK_RUN_COMPLETED, target)
            run = running.get(tid)
            if run is None or run.attempt != attempt:
                continue
            del running[tid]
            duration = max(0.0, time - run.started_at)
            ended.append((tid, run.attempt, run.worker_id, run.index, duration))
            stream.append(
                (run.worker_id, run.task_name, run.started_at, time, "completed", tid, run.index)
            )
            if len(slowest) < TOP_SLOWEST or duration > slowest[0][0]:
                record = {
                    "task_run_id": tid,
                    "task_name": run.task_name,
                    "node": run.node,
                    "index": run.index,
                    "attempt": run.attempt,
                    "worker_id": run.worker_id,
                    "started_at": run.started_at,
                    "duration_s": duration,
                    "outcome": "completed",
                    "error_type": "",
                }
                if len(slowest) < TOP_SLOWEST:
                    heapq.heappush(slowest, (duration, seq + i, record))
                else:
                    heapq.heapreplace(slowest, (duration, seq + i, record))
        if ended:
            sink.completed_many(self.flow_run_id, task_name, ended)

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
            self.n_failed += 1
            self._failure(e, self._end_attempt(e, "failed", sink))
            self._count(e.time, failed=True, on_finish=on_finish)
        elif kind == EventKind.TASK_RUN_LEASE_EXPIRED:
            self.n_lost += 1
            self._failure(e, self._end_attempt(e, "lost", sink))
        elif kind == EventKind.TASK_RUN_UPSTREAM_FAILED:
            self.scheduled_at.pop(e.task_run_id, None)
        elif kind == EventKind.NODE_FAILED:
            # A dependent of a failure or a cancelled node is no failure of its own.
            if not e.message.startswith(_NOT_OWN_NODE_FAILURES):
                self.n_failed += 1
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
        self._integrate(e.time)
        target = _TIME_TARGET.get(e.kind)
        if target is None:
            return
        if target == _EXPANDS:
            self.live[_PENDING] += e.count
            return
        self._move(e.task_run_id, e.kind, target)

    def _integrate(self, time: float) -> None:
        """Add the time since the last event to the task-run seconds of each state."""
        last = self.last_time
        if time > last and last:
            pending, scheduled, running, awaiting = self.live
            if pending or scheduled or running or awaiting:
                elapsed = time - last
                seconds = self.seconds
                seconds[0] += pending * elapsed
                seconds[1] += scheduled * elapsed
                seconds[2] += running * elapsed
                seconds[3] += awaiting * elapsed

    def _move(self, tid: int, kind: EventKind, target: int) -> None:
        """Move task run ``tid`` out of the state it is in, into ``target`` (``_TIME_TARGET``)."""
        live = self.live
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
        return self._end(
            e.task_run_id, e.attempt, e.time, e.seq, e.worker_id, e.error, outcome, sink
        )

    def _end(
        self,
        tid: int,
        attempt: int,
        time: float,
        seq: int,
        worker_id: str,
        error: Any,
        outcome: str,
        sink: EventSink,
    ) -> str:
        # A stretch of completions is closed by _complete_span: change both alike.
        run = self.running.get(tid)
        if run is None or run.attempt != attempt:
            return worker_id
        del self.running[tid]
        duration = max(0.0, time - run.started_at)
        record = {
            "task_run_id": tid,
            "task_name": run.task_name,
            "node": run.node,
            "index": run.index,
            "attempt": run.attempt,
            "worker_id": run.worker_id,
            "started_at": run.started_at,
            "duration_s": duration,
            "outcome": outcome,
            "error_type": getattr(error, "type", "") or "",
        }
        sink.finished(self.flow_run_id, record)
        self.stream.append(
            (run.worker_id, run.task_name, run.started_at, time, outcome, tid, run.index)
        )
        entry = (duration, seq, record)
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
        self,
        time: float,
        *,
        failed: bool,
        on_finish: Callable[[int, bool], None] | None,
        count: int = 1,
    ) -> None:
        second = int(time)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = [0, 0]
        bucket[1 if failed else 0] += count
        if on_finish is not None:
            for _ in range(count):
                on_finish(second, failed)
