"""The asyncio edge around the pure core: clock, wake-ups and the timer loop.

All core calls happen on the event loop thread and never await in between,
so each RPC handler sees and changes the state atomically. After every
change the handler calls :meth:`Runtime.after_change`, which turns the
core's drained outputs into asyncio wake-ups for watchers and long polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.settings import Settings

__all__ = ["Runtime"]

log = structlog.get_logger(__name__)


class Runtime:
    """Owns the Scheduler and the asyncio signals derived from it.

    Args:
        settings: Coordinator settings (lease TTL, tick interval, ...).
        clock: Returns the current time in seconds since the epoch;
            injectable for tests.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.core = Scheduler(
            lease_ttl_s=settings.lease_ttl_s, max_infra_failures=settings.max_infra_failures
        )
        self.clock = clock
        self._work = asyncio.Event()
        #: {flow_run_id: asyncio.Event set when the flow run's event log grows}
        self._flow_signals: dict[str, asyncio.Event] = {}
        self._ticker: asyncio.Task[None] | None = None

    def after_change(self) -> None:
        """Wake long polls and watchers after the core changed."""
        core = self.core
        if core.drain_work_added():
            self._work.set()
            self._work = asyncio.Event()
        for flow_run_id in core.drain_changed_flows():
            signal = self._flow_signals.pop(flow_run_id, None)
            if signal is not None:
                signal.set()

    def flow_signal(self, flow_run_id: str) -> asyncio.Event:
        """An event set the next time the flow run's event log grows."""
        signal = self._flow_signals.get(flow_run_id)
        if signal is None:
            signal = self._flow_signals[flow_run_id] = asyncio.Event()
        return signal

    async def wait_for_work(self, timeout_s: float) -> None:
        """Wait until task runs become ready, at most ``timeout_s`` seconds."""
        work = self._work
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work.wait(), timeout_s)

    def start(self) -> None:
        """Start the timer loop (retries due, silent workers)."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def stop(self) -> None:
        """Stop the timer loop."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    async def _tick_loop(self) -> None:
        interval = self.settings.tick_interval_s
        while True:
            await asyncio.sleep(interval)
            before = set(self.core.workers)
            self.core.tick(self.clock())
            lost = before - set(self.core.workers)
            for worker_id in lost:
                log.warning("worker_lost", worker_id=worker_id, reason="lease TTL expired")
            self.after_change()
