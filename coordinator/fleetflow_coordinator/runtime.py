"""The asyncio edge around the pure core: clock, wake-ups, group commit, timers.

All core calls happen on the event loop thread and never await in between,
so each RPC handler sees and changes the state atomically. After every
change the handler calls :meth:`Runtime.after_change`, which wakes
long-polling workers and the committer; before it answers, a handler whose
answer depends on the change awaits :meth:`Runtime.durable`, which returns
once a group commit holding the change is stored. Watchers are shown only
events that are stored (``flow.durable_seq``), so an event a watcher has seen
survives any crash with the same sequence number.

Every background loop runs under the :class:`~fleetflow_coordinator.supervisor.Supervisor`
(a crash stops the process, see there), and every store call goes through
the one :class:`~fleetflow_coordinator.supervisor.StoreWriter`: group
commits are written one at a time, and :meth:`Runtime.stop` lets the commit
in flight finish before it writes the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from fleetflow_coordinator.clock import SteadyClock
from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.core.model import FlowRun
from fleetflow_coordinator.metrics import Metrics
from fleetflow_coordinator.observe import Observer
from fleetflow_coordinator.results import ResultStore
from fleetflow_coordinator.settings import Settings
from fleetflow_coordinator.store import MemoryStore, Store, StoreError
from fleetflow_coordinator.store.base import EVENT_COLUMNS, NotLeader
from fleetflow_coordinator.store.rows import changes_to_batch, gc_paused, restore_snapshot
from fleetflow_coordinator.supervisor import StoreWriter, Supervisor
from fleetflow_coordinator.usage import UsageBook
from fleetflow_coordinator.usage_store import dirty_meta, load_usage

__all__ = ["Runtime"]

log = structlog.get_logger(__name__)

#: Seconds between saves of measured usage that changed.
USAGE_SAVE_S = 5.0
#: ``meta`` key prefix of a limit set over the API (value: the limit, or "none").
LIMIT_PREFIX = "limit:"


class Runtime:
    """Owns the Scheduler, the store, and the asyncio signals derived from them.

    Args:
        settings: Coordinator settings (lease TTL, commit window, retention, ...).
        store: Where state is persisted; a fresh MemoryStore when omitted.
        clock: Returns the current time in seconds since the epoch; injectable.
            By default a :class:`~fleetflow_coordinator.clock.SteadyClock`:
            wall-clock time that a step of the system clock does not jump.
        writer: The store's one writer, when the process shares it between
            runtimes (a hot standby that becomes active again); by default the
            runtime makes its own and closes it in :meth:`stop`.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        clock: Callable[[], float] | None = None,
        *,
        writer: StoreWriter | None = None,
    ) -> None:
        self.settings = settings
        self.store: Store = store if store is not None else MemoryStore()
        self._own_writer = writer is None
        self.writer = writer or StoreWriter(self.store, inline_rows=settings.inline_commit_rows)
        #: Runs every background loop; its ``failed`` event stops the process.
        self.supervisor = Supervisor()
        self.supervisor.on_failure(self._halt)
        self.core = Scheduler(
            lease_ttl_s=settings.lease_ttl_s,
            max_infra_failures=settings.max_infra_failures,
            max_result_bytes=settings.max_result_bytes,
            max_leases_per_worker=settings.max_leases_per_worker,
            uniform=random.random,
            concurrency_limits=settings.limits(),
            unschedulable_timeout_s=settings.unschedulable_timeout_s,
        )
        self.clock: Callable[[], float] = clock if clock is not None else SteadyClock()
        self._clock_steps = 0
        #: Counters the edge increments after core calls (served on /metrics).
        self.metrics = Metrics()
        #: Measured usage per task, fed by ReportOutcomes (see usage.py).
        self.usage = UsageBook(sink=self.metrics)
        #: The event-log fold behind the dashboard and GetFlowRunStats; set by
        #: the dashboard, or made on first use (see observe.py).
        self.observer: Observer | None = None
        self._work = asyncio.Event()
        #: {flow_run_id: asyncio.Event set when the flow run's stored events grow}
        self._flow_signals: dict[str, asyncio.Event] = {}
        #: {flow_run_id: asyncio.Event set once the flow run has durably ended}
        self._end_signals: dict[str, asyncio.Event] = {}
        self._commit_wake = asyncio.Event()
        self._drained_gen = 0
        self._committed_gen = 0
        #: [(generation, future)] resolved once that generation is stored
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: Set when a loop crashed (a store write failure included): the
        #: process must stop (see server.serve()).
        self.fatal: asyncio.Event = self.supervisor.failed
        #: Set when the database refused a write because another coordinator
        #: took over (PostgreSQL hot standby): this runtime must step down.
        self.deposed: asyncio.Event = asyncio.Event()
        #: Set when the server stops serving (a stop, a crashed loop, a
        #: deposition): open WorkerSession streams end (see session.py).
        self.serving_over: asyncio.Event = asyncio.Event()
        #: Whether this coordinator surely still leads (set by the hot standby,
        #: checked for every message of a WorkerSession); None: always.
        self.leads: Callable[[], bool] | None = None
        #: Why the runtime stopped writing (a crash or a deposition), if it did.
        self.halt_error: BaseException | None = None
        self._closing = False
        self.last_commit_s = 0.0
        #: Where payloads above the inline limit go (opened by :meth:`open`).
        self.results: ResultStore | None = None
        #: ``(inline_max_bytes, map_inline_bytes)`` for leases.
        self.inline_limits = (settings.inline_max_bytes, settings.map_inline_bytes)
        #: ``{key: value or None}`` for the store's ``meta``, written with the next commit.
        self._meta: dict[str, str | None] = {}
        #: Tags whose limit was set (or removed) over the API; stored, so they
        #: outlive a restart and override the settings' limits.
        self.api_limits: set[str] = set()

    @property
    def fatal_error(self) -> BaseException | None:
        """The loop failure that stopped the process, or ``None``."""
        return self.supervisor.error

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> int:
        """Load stored state into the core; returns the number of flow runs restored.

        Raises:
            StoreError: the stored state cannot be read.
            fleetflow_coordinator.core.InvalidFlowSpec: a stored spec is invalid.
        """
        if self.results is None:
            self.results = await asyncio.to_thread(ResultStore.from_settings, self.settings)
        with gc_paused():  # linear restore: see store/rows.py
            snapshot = await self.writer.call(self.store.load)
            floor = getattr(self.clock, "not_before", None)
            if floor is not None:  # a clock stepped back across the restart
                floor(_latest_stored_time(snapshot))
            restored = restore_snapshot(self.core, snapshot, self.clock())
        self._restore_meta(snapshot.meta)
        self.after_change()
        return restored

    def _restore_meta(self, meta: dict[str, str]) -> None:
        """Apply what ``meta`` keeps: limits set over the API, measured usage."""
        for key, value in meta.items():
            if key.startswith(LIMIT_PREFIX):
                tag = key.removeprefix(LIMIT_PREFIX)
                self.core.set_limit(tag, None if value == "none" else int(value))
                self.api_limits.add(tag)
        load_usage(self.usage, meta)

    def set_limit(self, tag: str, limit: int | None) -> None:
        """Set (None: remove) a tag's limit now and store it with the next commit."""
        self.core.set_limit(tag, limit)
        self.api_limits.add(tag)
        self.store_meta({LIMIT_PREFIX + tag: "none" if limit is None else str(limit)})

    def store_meta(self, meta: dict[str, str | None]) -> None:
        """Write ``meta`` rows with the next commit (see :meth:`durable`)."""
        if meta:
            self._meta.update(meta)
            self._commit_wake.set()

    def _pending(self) -> bool:
        return self.core.has_changes() or bool(self._meta)

    def start(self) -> None:
        """Start the committer, the timer loop and the retention loop, supervised."""
        self.spawn("commit", self._commit_loop())
        self.spawn("tick", self._tick_loop())
        self.spawn("prune", self._prune_loop())
        self.spawn("usage", self._usage_loop())

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background loop under the supervisor (see ``supervisor.py``)."""
        return self.supervisor.spawn(name, coro)

    async def stop(self) -> None:
        """Stop the loops, let the commit in flight finish, store what is pending, close.

        After a loop crash or a deposition nothing more is written: the
        process restarts (or steps down) on what is already stored.
        """
        self._closing = True
        self.supervisor.stopping = True
        await self.supervisor.stop([n for n in self.supervisor.tasks if n != "commit"])
        committer = self.supervisor.tasks.get("commit")
        if committer is not None:
            self._commit_wake.set()  # it commits what is pending, then returns
            await asyncio.wait([committer])
        elif self.halt_error is None and self._pending():
            await self._commit_once()  # never started: store what open() changed
        self._fail_waiters(self.halt_error or StoreError("the coordinator stopped"))
        if self._own_writer:
            await self.writer.close()
        if self.results is not None:
            self.results.close()

    def depose(self, error: NotLeader) -> None:
        """Step down: another coordinator holds the leadership (or it cannot be proven).

        Nothing more is written, every RPC waiting for a commit fails with
        ``error``, and :attr:`deposed` is set for the process to stand by.
        """
        if self.deposed.is_set() or self.halt_error is not None:
            return
        log.warning("coordinator_deposed", reason=str(error))
        self.supervisor.stopping = True  # loops ending now are no crash
        self._halt(error)
        self.deposed.set()

    def _halt(self, error: BaseException) -> None:
        """Write nothing more: fail every waiter now (a crash or a deposition)."""
        if self.halt_error is None:
            self.halt_error = error
        if not isinstance(error, StoreError):  # a crashed loop: nothing more is stored
            error = StoreError(f"the coordinator stopped writing: {error}")
        self._fail_waiters(error)
        self._commit_wake.set()

    def _fail_waiters(self, error: BaseException) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a waiter may be gone already
        self._waiters.clear()

    # ------------------------------------------------------------------- signals

    def after_change(self) -> None:
        """Wake long polls and the committer after the core changed."""
        core = self.core
        if core.drain_work_added():
            self._work.set()
            self._work = asyncio.Event()
        core.drain_changed_flows()  # watchers are woken by commits instead
        if core.has_changes():
            self._commit_wake.set()
        if core.has_after_end_notes():
            # Late results on finished runs change nothing and are not events
            # any more (issue 11, item 6): one log line each (at most 100 per
            # call; all are counted in fleetflow_events_after_end_total).
            total = sum(core.events_after_end.values())
            for (
                flow_run_id,
                kind,
                task_run_id,
                attempt,
                worker_id,
                message,
            ) in core.drain_after_end():
                log.info(
                    "events_after_flow_run_end",
                    flow_run_id=flow_run_id,
                    kind=kind,
                    task_run_id=task_run_id,
                    attempt=attempt,
                    worker_id=worker_id,
                    message=message,
                    total=total,
                )

    async def durable(self) -> None:
        """Return once every change made so far is stored.

        Raises:
            StoreError: the store failed; the change is not durable.
        """
        target = self._drained_gen + 1 if self._pending() else self._drained_gen
        if self._committed_gen >= target:
            return
        if self.halt_error is not None:
            if isinstance(self.halt_error, NotLeader):
                raise self.halt_error
            raise StoreError(f"the coordinator stopped writing: {self.halt_error}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self._commit_wake.set()
        await future

    def flow_signal(self, flow_run_id: str) -> asyncio.Event:
        """An event set the next time the flow run's stored event log grows."""
        signal = self._flow_signals.get(flow_run_id)
        if signal is None:
            signal = self._flow_signals[flow_run_id] = asyncio.Event()
        return signal

    def flow_end_signal(self, flow_run_id: str) -> asyncio.Event:
        """An event set once the flow run has ended and its terminal event is stored.

        What ``GetFlowRun``'s long poll waits on: a map's commits grow its
        stored log hundreds of times, and only the last one ends it.
        """
        signal = self._end_signals.get(flow_run_id)
        if signal is None:
            signal = self._end_signals[flow_run_id] = asyncio.Event()
        return signal

    @staticmethod
    def durably_ended(flow: FlowRun) -> bool:
        """Whether the flow run has ended and its terminal event is stored."""
        return flow.terminal and flow.durable_seq >= len(flow.events)

    async def wait_for_work(self, timeout_s: float) -> None:
        """Wait until task runs become ready, at most ``timeout_s`` seconds."""
        work = self._work
        # asyncio.timeout, not wait_for: no task per wait, and the waiter runs
        # in the loop iteration right after the change, before the committer,
        # so the lease it makes joins the group commit of what woke it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await work.wait()

    # -------------------------------------------------------------- group commit

    async def _commit_loop(self) -> None:
        """The one committer: runs until stopped; a store failure crashes it (fatal)."""
        settings = self.settings
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            if self.halt_error is not None:
                return
            if (
                not self._closing
                and settings.commit_interval_s > 0
                and self.core.pending_changes() < settings.commit_max_changes
            ):
                # Optional extra window for changes from concurrent RPCs to join.
                await asyncio.sleep(settings.commit_interval_s)
            try:
                await self._commit_once()
            except NotLeader as exc:
                self.depose(exc)
                return
            if self._closing and not self._pending():
                return

    async def _commit_once(self) -> None:
        if self._closing:
            self.store_meta(dirty_meta(self.usage))  # the last measurements too
        changes = self.core.drain_changes()
        meta, self._meta = self._meta, {}
        self._drained_gen += 1
        generation = self._drained_gen
        if len(changes) or meta:
            batch = changes_to_batch(changes)
            batch.meta = meta
            started = time.perf_counter()
            # A small WAL commit (no fsync with synchronous=NORMAL) costs less
            # than the hop to a thread and back; large ones go to the store thread.
            await self.writer.write(batch)
            self.last_commit_s = time.perf_counter() - started
            stored: dict[str, int] = {}
            for flow_run_id, event in changes.events:
                stored[flow_run_id] = event.seq
            for run in changes.event_runs:
                last = run[1] + run[2] - 1
                if last > stored.get(run[0], 0):
                    stored[run[0]] = last
            for flow, _, _, count, first_seq, _ in changes.expansions:
                last = first_seq + count - 1
                if last > stored.get(flow.id, 0):
                    stored[flow.id] = last
            flows = self.core.flows
            for flow_run_id, seq in stored.items():
                flow = flows.get(flow_run_id)
                if flow is not None and seq > flow.durable_seq:
                    flow.durable_seq = seq
                signal = self._flow_signals.pop(flow_run_id, None)
                if signal is not None:
                    signal.set()
                if flow is not None and flow.terminal and flow.durable_seq >= len(flow.events):
                    signal = self._end_signals.pop(flow_run_id, None)
                    if signal is not None:
                        signal.set()
        self._committed_gen = generation
        waiting = []
        for target, future in self._waiters:
            if target <= generation:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._waiters = waiting
        if waiting:
            self._commit_wake.set()

    # ------------------------------------------------------------------- timers

    async def _tick_loop(self) -> None:
        interval = self.settings.tick_interval_s
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            # Woken late: the loop was blocked (e.g. expanding a huge map), so
            # heartbeats that arrived meanwhile were not read yet. That silence
            # is the coordinator's, not the workers': excuse it before expiring.
            late = loop.time() - due
            if late > max(interval, 0.1 * self.settings.lease_ttl_s):
                self.core.excuse_stall(late)
                log.warning("coordinator_loop_stalled", seconds=round(late, 3))
            before = set(self.core.workers)
            self.core.tick(self.clock())
            steps = getattr(self.clock, "steps", 0)
            if steps != self._clock_steps:  # the system clock was stepped: not followed
                self._clock_steps = steps
                log.warning("wall_clock_stepped", offset_s=round(self.clock.offset_s, 3))  # type: ignore[attr-defined]
            for worker_id in before - set(self.core.workers):
                self.metrics.workers_lost.inc()
                log.warning("worker_lost", worker_id=worker_id, reason="lease TTL expired")
            self.after_change()

    async def prune(self, older_than_s: float) -> list[str]:
        """Delete finished flow runs that ended more than ``older_than_s`` seconds ago."""
        keys = {f.id: f.idempotency_key for f in self.core.flows.values() if f.terminal}
        pruned = self.core.prune(self.clock() - older_than_s)
        self.usage.forget(pruned)
        for flow_run_id in pruned:
            self._flow_signals.pop(flow_run_id, None)
            self._end_signals.pop(flow_run_id, None)
        self.after_change()
        await self.durable()
        if pruned and self.results is not None:  # rows first: a crash leaves orphans, not holes
            await self.results.delete_flow_runs((i, keys.get(i, "")) for i in pruned)
        if pruned:
            log.info("flow_runs_pruned", count=len(pruned), older_than_s=older_than_s)
        return pruned

    async def _usage_loop(self) -> None:
        """Store measured usage that changed, every :data:`USAGE_SAVE_S` seconds."""
        while True:
            await asyncio.sleep(USAGE_SAVE_S)
            self.store_meta(dirty_meta(self.usage))

    async def _prune_loop(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.prune_interval_s)
            await self.prune(settings.retention_s)
            if self.results is not None:
                try:
                    # Object mtimes are wall-clock times: compare with the wall
                    # clock, not the coordinator's (which may be bleeding a step).
                    await self.results.collect_orphans(self.core.flows, time.time())
                except Exception as exc:  # noqa: BLE001 - a store outage must not stop retention
                    log.warning("orphan_collection_failed", error=str(exc))


def _latest_stored_time(snapshot: Any) -> float:
    """The latest event time ``snapshot`` holds, seconds since the epoch (0: none).

    Events of a flow run are stored in ``seq`` order and stamped by a clock that
    never goes backwards, so each flow run's last event is its latest.
    """
    latest = 0.0
    time_at = EVENT_COLUMNS.index("time")
    for rows in snapshot.events.values():
        if rows:
            latest = max(latest, float(rows[-1][time_at]))
    return latest
