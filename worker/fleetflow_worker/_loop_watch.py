"""Notice a blocked event loop, and say what it costs.

An ``async def`` task runs on the worker's own event loop, where it can be
cancelled only where it awaits. Blocking code in it (``time.sleep``, CPU-bound
work, a blocking client) holds the loop: heartbeats, new leases, outcomes and
the task's own timeout all wait, and a stall longer than the lease TTL expires
the worker's leases, so its task runs are retried elsewhere as infrastructure
failures. :func:`watch_loop` wakes in short steps and, when one overran by at
least ``threshold_s()``, logs ``worker_loop_blocked`` once for that stall,
saying how long and what to do: make the task a plain ``def`` (its process is
killed at the timeout) or ``await asyncio.to_thread(...)`` the blocking part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

__all__ = ["STEP_S", "watch_loop"]

log = structlog.get_logger("fleetflow.worker")

#: How often the watch wakes, seconds.
STEP_S = 0.25


async def watch_loop(threshold_s: Callable[[], float]) -> None:
    """Log each stall of the running loop of at least ``threshold_s()`` seconds; never returns.

    Args:
        threshold_s: The shortest stall worth a warning, seconds (read at each step).
    """
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(STEP_S)
        stalled = loop.time() - before - STEP_S
        if stalled >= threshold_s():
            log.warning(
                "worker_loop_blocked",
                seconds=round(stalled, 2),
                message="the worker's event loop was blocked: an async def task running "
                "blocking code holds heartbeats, leases and its own timeout; make it a plain "
                "def task or await asyncio.to_thread(...) the blocking part",
            )
