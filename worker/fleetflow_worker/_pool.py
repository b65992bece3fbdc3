"""The process pool that runs plain ``def`` tasks, rebuilt when a process dies.

Processes come from a forkserver: the worker has a live gRPC channel and
threads, and gRPC is not fork-safe, so a plain ``fork`` is never used. At most
``size`` attempts are handed to the executor at once (the rest wait here, on
a semaphore), so when a process dies only the attempts actually running in
the pool fail with it, and an attempt cancelled while it waits never starts.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

import structlog

from fleetflow_worker import _child
from fleetflow_worker._codec import Payload, WireArg
from fleetflow_worker.errors import TaskProcessDied

__all__ = ["TaskProcessPool", "PoolStartError"]

log = structlog.get_logger()


class PoolStartError(RuntimeError):
    """The pool's processes could not start (usually: a --module fails to import there)."""


@dataclass(eq=False)
class _Generation:
    """One ProcessPoolExecutor and what is known about its processes."""

    executor: ProcessPoolExecutor
    #: {pid: process}; every process this executor spawned (it forgets dead ones).
    processes: dict[int, BaseProcess] = field(default_factory=dict)
    broken: bool = False
    #: Reads the exit code blamed for the break (same for every failed attempt).
    blame: asyncio.Future[int | None] | None = None

    def remember_processes(self) -> None:
        self.processes.update(getattr(self.executor, "_processes", None) or {})


class TaskProcessPool:
    """Runs attempts of plain ``def`` tasks in pool processes.

    Args:
        size: Number of processes (and most attempts in the pool at once).
        module_specs: User modules each process imports (``--module`` values).
        mp_context: multiprocessing context; ``forkserver`` by default.
    """

    def __init__(
        self, size: int, module_specs: Sequence[str], *, mp_context: BaseContext | None = None
    ) -> None:
        self.size = max(1, size)
        self._module_specs = list(module_specs)
        self._ctx = mp_context or multiprocessing.get_context("forkserver")
        self._current: _Generation | None = None
        self._slots = asyncio.Semaphore(self.size)
        self._closed = False

    def _generation(self) -> _Generation:
        if self._closed:
            raise RuntimeError("the task process pool is closed")
        if self._current is None or self._current.broken:
            executor = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=self._ctx,
                initializer=_child.init_process,
                initargs=(self._module_specs,),
            )
            self._current = _Generation(executor)
        return self._current

    async def start(self) -> None:
        """Start every process and check that it imports the user modules.

        Raises:
            PoolStartError: a process failed to start or to import a module.
        """
        await asyncio.to_thread(self._warm_up)

    def _warm_up(self) -> None:
        gen = self._generation()
        futures = [gen.executor.submit(_child.ping) for _ in range(self.size)]
        gen.remember_processes()
        try:
            for future in futures:
                future.result()
        except BrokenProcessPool as exc:
            gen.broken = True
            raise PoolStartError(
                "the task processes failed to start; run the worker's --module imports "
                f"in a fresh interpreter to see why ({exc})"
            ) from exc

    async def run(
        self,
        task_name: str,
        args: Sequence[WireArg],
        split_result: bool,
        timeout_s: float = 0.0,
        *,
        skip: Callable[[], bool] | None = None,
    ) -> Payload | None:
        """Run one attempt in a pool process once a process is free.

        Args:
            task_name: Registered task name.
            args: Pickled arguments as leased.
            split_result: Return the result item by item.
            timeout_s: Soft time limit in seconds (0: none).
            skip: Asked once a process is free; if it returns True the
                attempt does not start and None is returned.

        Returns:
            The payload the pool process sent back, or None when skipped.

        Raises:
            TaskProcessDied: the pool broke (a process died) while the attempt
                was in it; the pool is rebuilt for the next attempt.
        """
        async with self._slots:
            if skip is not None and skip():
                return None
            gen = self._generation()
            try:
                future = gen.executor.submit(
                    _child.run_task, task_name, list(args), split_result, timeout_s
                )
            except BrokenProcessPool as exc:
                raise TaskProcessDied(await self._blame(gen)) from exc
            gen.remember_processes()
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool as exc:
                raise TaskProcessDied(await self._blame(gen)) from exc

    async def _blame(self, gen: _Generation) -> int | None:
        """Mark a generation broken (the next run builds a new one); return its exit code."""
        gen.broken = True
        if gen.blame is None:
            gen.blame = asyncio.ensure_future(self._read_exitcode(gen))
        return await asyncio.shield(gen.blame)

    async def _read_exitcode(self, gen: _Generation) -> int | None:
        # The executor's manager thread reaps the processes of a broken pool;
        # reading exit codes while it does can race (multiprocessing then
        # reports 255), so let it finish first.
        manager = getattr(gen.executor, "_executor_manager_thread", None)
        if manager is not None:
            await asyncio.to_thread(manager.join, 5.0)
        exitcode = _dead_exitcode(gen.processes.values())
        log.warning("task_process_died", exitcode=exitcode, pool_size=self.size)
        gen.executor.shutdown(wait=False, cancel_futures=True)
        return exitcode

    def kill(self) -> None:
        """Kill every pool process now and start no more.

        Attempts in the pool fail with :class:`TaskProcessDied`; attempts that
        still wait for a process fail with ``RuntimeError``.
        """
        self._closed = True
        if self._current is not None:
            for process in list(self._current.processes.values()):
                if process.exitcode is None:
                    process.kill()

    async def close(self) -> None:
        """Shut the pool down, waiting for running attempts (kill first to not wait)."""
        self._closed = True
        gen, self._current = self._current, None
        if gen is not None:
            await asyncio.to_thread(gen.executor.shutdown, wait=True, cancel_futures=True)


def _dead_exitcode(processes: Sequence[BaseProcess] | object) -> int | None:
    """Pick the exit code of the process that broke the pool.

    The executor terminates (SIGTERM) the survivors after a break, so an exit
    code other than -SIGTERM points at the process that died first.
    """
    codes = [p.exitcode for p in processes]  # type: ignore[attr-defined]
    dead = [c for c in codes if c is not None]
    for code in dead:
        if code != -signal.SIGTERM:
            return code
    return dead[0] if dead else None
