"""The asyncio edge around the pure core: clock, wake-ups, group commit, timers.

All core calls happen on the event loop thread and never await in between,
so each RPC handler sees and changes the state atomically. After every
change the handler calls :meth:`Runtime.after_change`, which wakes
long-polling workers and the committer; before it answers, a handler whose
answer depends on the change awaits :meth:`Runtime.durable`, which returns
once a group commit holding the change is stored. Watchers are shown only
events that are stored (``flow.durable_seq``), so an event a watcher has seen
survives any crash with the same sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import structlog

from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.core.model import FlowRun
from fleetflow_coordinator.metrics import Metrics
from fleetflow_coordinator.observe import Observer
from fleetflow_coordinator.settings import Settings
from fleetflow_coordinator.store import MemoryStore, Store, StoreError
from fleetflow_coordinator.store.rows import changes_to_batch, snapshot_to_flows
from fleetflow_coordinator.usage import UsageBook

__all__ = ["Runtime"]

log = structlog.get_logger(__name__)


class Runtime:
    """Owns the Scheduler, the store, and the asyncio signals derived from them.

    Args:
        settings: Coordinator settings (lease TTL, commit window, retention, ...).
        store: Where state is persisted; a fresh MemoryStore when omitted.
        clock: Returns the current time in seconds since the epoch; injectable.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store: Store = store if store is not None else MemoryStore()
        self.core = Scheduler(
            lease_ttl_s=settings.lease_ttl_s,
            max_infra_failures=settings.max_infra_failures,
            max_result_bytes=settings.max_result_bytes,
            uniform=random.random,
            concurrency_limits=settings.limits(),
            unschedulable_timeout_s=settings.unschedulable_timeout_s,
        )
        self.clock = clock
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
        self._commit_wake = asyncio.Event()
        self._drained_gen = 0
        self._committed_gen = 0
        #: [(generation, future)] resolved once that generation is stored
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: Set when a store write failed: the process must stop (see serve()).
        self.fatal: asyncio.Event = asyncio.Event()
        self.fatal_error: BaseException | None = None
        self.last_commit_s = 0.0

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> int:
        """Load stored state into the core; returns the number of flow runs restored.

        Raises:
            StoreError: the stored state cannot be read.
            fleetflow_coordinator.core.InvalidFlowSpec: a stored spec is invalid.
        """
        snapshot = await asyncio.to_thread(self.store.load)
        flows = snapshot_to_flows(snapshot)
        self.core.restore(flows, self.clock(), snapshot.next_task_run_id)
        self.after_change()
        return len(flows)

    def start(self) -> None:
        """Start the committer, the timer loop and the retention loop."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._commit_loop()),
            loop.create_task(self._tick_loop()),
            loop.create_task(self._prune_loop()),
        ]

    async def stop(self) -> None:
        """Commit what is pending, then stop the background tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.fatal.is_set() and self.core.has_changes():
            await self._commit_once()
        await asyncio.to_thread(self.store.close)

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

    async def durable(self) -> None:
        """Return once every change made so far is stored.

        Raises:
            StoreError: the store failed; the change is not durable.
        """
        target = self._drained_gen + 1 if self.core.has_changes() else self._drained_gen
        if self._committed_gen >= target:
            return
        if self.fatal.is_set():
            raise StoreError(f"the store failed earlier: {self.fatal_error}")
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

    @staticmethod
    def durably_ended(flow: FlowRun) -> bool:
        """Whether the flow run has ended and its terminal event is stored."""
        return flow.terminal and flow.durable_seq >= len(flow.events)

    async def wait_for_work(self, timeout_s: float) -> None:
        """Wait until task runs become ready, at most ``timeout_s`` seconds."""
        work = self._work
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work.wait(), timeout_s)

    # -------------------------------------------------------------- group commit

    async def _commit_loop(self) -> None:
        settings = self.settings
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            if (
                settings.commit_interval_s > 0
                and self.core.pending_changes() < settings.commit_max_changes
            ):
                # Optional extra window for changes from concurrent RPCs to join.
                await asyncio.sleep(settings.commit_interval_s)
            try:
                await self._commit_once()
            except StoreError as exc:
                log.critical("store_write_failed", error=str(exc))
                self.fatal_error = exc
                self.fatal.set()
                for _, future in self._waiters:
                    if not future.done():
                        future.set_exception(exc)
                self._waiters.clear()
                return

    async def _commit_once(self) -> None:
        changes = self.core.drain_changes()
        self._drained_gen += 1
        generation = self._drained_gen
        if len(changes):
            batch = changes_to_batch(changes)
            started = time.perf_counter()
            if (
                isinstance(self.store, MemoryStore)
                or len(batch) <= self.settings.inline_commit_rows
            ):
                # A small WAL commit (no fsync with synchronous=NORMAL) costs less
                # than the hop to a thread and back; large ones go to a thread.
                self.store.write(batch)
            else:
                await asyncio.to_thread(self.store.write, batch)
            self.last_commit_s = time.perf_counter() - started
            stored: dict[str, int] = {}
            for flow_run_id, event in changes.events:
                stored[flow_run_id] = event.seq
            for row in changes.event_rows:
                if row[1] > stored.get(row[0], 0):
                    stored[row[0]] = row[1]
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
            for worker_id in before - set(self.core.workers):
                self.metrics.workers_lost.inc()
                log.warning("worker_lost", worker_id=worker_id, reason="lease TTL expired")
            self.after_change()

    async def prune(self, older_than_s: float) -> list[str]:
        """Delete finished flow runs that ended more than ``older_than_s`` seconds ago."""
        pruned = self.core.prune(self.clock() - older_than_s)
        self.usage.forget(pruned)
        for flow_run_id in pruned:
            self._flow_signals.pop(flow_run_id, None)
        self.after_change()
        await self.durable()
        if pruned:
            log.info("flow_runs_pruned", count=len(pruned), older_than_s=older_than_s)
        return pruned

    async def _prune_loop(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.prune_interval_s)
            await self.prune(settings.retention_s)
