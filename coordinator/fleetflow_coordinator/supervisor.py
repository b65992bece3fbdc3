"""One supervisor for the coordinator's background loops, and one writer for its store.

**Supervision rule.** Every background loop (group commit, timer ticks,
retention, leadership renewal, the dashboard's fold) is started through
:meth:`Supervisor.spawn`. A loop that raises, or returns while it should
run for ever, is a bug or a fault the process cannot repair in place: the
supervisor logs it once, with its traceback (``coordinator_loop_crashed``),
and sets :attr:`Supervisor.failed`. The process then turns its gRPC health
to NOT_SERVING, stops answering, writes nothing more and exits non-zero, so
whatever supervises the process restarts it on the durable state. It never
runs half-alive (serving RPCs while, say, no lease ever expires again).

**One writer.** :class:`StoreWriter` is the only way to the store. Calls run
one at a time, in order: small batches on the event loop, everything else on
one dedicated thread. A write in flight is never abandoned: cancelling its
caller leaves the write running, and :meth:`StoreWriter.close` waits for it
before it closes the store, so a batch is written whole or not at all
(issue 11: stopping during a 60,000-row commit tore it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from fleetflow_coordinator.store.base import RowBatch, Store

__all__ = ["LoopCrashed", "StoreWriter", "Supervisor"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class LoopCrashed(RuntimeError):
    """A background loop ended with an exception or returned unexpectedly.

    Attributes:
        loop: The loop's name (``"commit"``, ``"tick"``, ...).
        error: What it raised, or ``None`` when it returned.
    """

    def __init__(self, loop: str, error: BaseException | None) -> None:
        self.loop = loop
        self.error = error
        what = f"{type(error).__name__}: {error}" if error is not None else "returned"
        super().__init__(f"coordinator loop {loop!r} stopped ({what}); see the traceback logged")


class Supervisor:
    """Starts background loops and turns the first failure of any into one fatal signal."""

    def __init__(self) -> None:
        #: Set once a loop crashed; the process must stop (see the module docstring).
        self.failed = asyncio.Event()
        #: The first failure, or ``None``.
        self.error: LoopCrashed | None = None
        #: {name: task} of the loops started and not yet ended.
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        #: Set while the owner stops the loops: a loop ending now is no failure.
        self.stopping = False
        self._on_failure: list[Callable[[LoopCrashed], None]] = []

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as the loop ``name``; a crash of it fails the whole process.

        Args:
            name: A unique, short loop name (it appears in the log line).
            coro: The loop; it should run until cancelled.

        Returns:
            The asyncio task (cancelling it is a clean stop, never a failure).
        """
        task = asyncio.get_running_loop().create_task(coro, name=f"fleetflow-{name}")
        self.tasks[name] = task
        task.add_done_callback(lambda t: self._ended(name, t))
        return task

    def on_failure(self, callback: Callable[[LoopCrashed], None]) -> None:
        """Call ``callback(error)`` once, on the loop thread, when a loop crashes."""
        self._on_failure.append(callback)

    def fail(self, name: str, error: BaseException | None) -> None:
        """Record a fatal failure of ``name`` (used by the loops' own callers too)."""
        if self.error is not None:
            return
        crash = LoopCrashed(name, error)
        self.error = crash
        if error is not None:
            log.critical(
                "coordinator_loop_crashed",
                loop=name,
                error=f"{type(error).__name__}: {error}",
                exc_info=error,
            )
        else:
            log.critical("coordinator_loop_crashed", loop=name, error="the loop returned")
        self.failed.set()
        for callback in self._on_failure:
            callback(crash)

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self.tasks.get(name) is task:
            del self.tasks[name]
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self.stopping:
            return
        self.fail(name, error)

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the named loops (all when ``None``) and wait until they ended."""
        if names is None:
            self.stopping = True
        tasks = [t for n, t in list(self.tasks.items()) if names is None or n in names]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class StoreWriter:
    """The only path to a store: one call at a time, never abandoned half-way.

    Args:
        store: The store to write.
        inline_rows: Batches up to this many rows are written on the event
            loop when the store allows it (``Store.inline_writes``, default
            true): a small local commit costs less than a thread hop.
    """

    def __init__(self, store: Store, *, inline_rows: int = 0) -> None:
        self.store = store
        self.inline_rows = inline_rows
        #: "always" (memory), True (up to ``inline_rows``), a row limit of the
        #: store's own (PostgreSQL), or False (always threaded).
        self._inline = getattr(store, "inline_writes", True)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="fleetflow-store"
        )
        #: The call running on the store thread, if any.
        self._inflight: asyncio.Future[Any] | None = None
        self._closed = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store thread after any call in flight; return its result.

        Cancelling the caller does not stop the call: it still runs to the end,
        and the next call (or :meth:`close`) waits for it.

        Raises:
            RuntimeError: the writer is closed.
            Exception: whatever ``fn`` raised.
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        await self._settle()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        self._inflight = future
        try:
            return await asyncio.shield(future)
        finally:
            if future.done() and self._inflight is future:
                self._inflight = None

    async def write(self, batch: RowBatch) -> None:
        """Store one batch atomically: on the loop if small, else on the store thread.

        Raises:
            StoreError: the store refused or failed; nothing of the batch is stored.
        """
        inline = self._inline
        if inline == "always":
            small = True
        elif isinstance(inline, bool):
            small = inline and len(batch) <= self.inline_rows
        else:  # a row limit of the store's own
            small = len(batch) <= min(int(inline), self.inline_rows)
        if small and self._inflight is None:
            if self._closed:
                raise RuntimeError("the store is closed")
            self.store.write(batch)
            return
        await self.call(self.store.write, batch)

    async def _settle(self) -> None:
        """Wait for the call in flight (if any) to end, whatever its outcome."""
        inflight = self._inflight
        if inflight is not None:
            await asyncio.wait([inflight])
            if self._inflight is inflight:
                self._inflight = None

    async def close(self) -> None:
        """Wait for the call in flight, then close the store (idempotent)."""
        if self._closed:
            return
        await self._settle()
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.store.close)
        finally:
            self._executor.shutdown(wait=False)
