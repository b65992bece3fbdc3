"""Executors: what runs the attempts of plain ``def`` tasks (``--executor``).

Every executor offers the same calls as
:class:`~fleetflow_worker._pool.TaskProcessPool` (``start``, ``run``,
``run_batch``, ``kill``, ``close``) plus ``capacity()``, so
:class:`~fleetflow_worker._execute.AttemptRunner` does not know which one it
drives. Leasing, fencing, retries, outcomes and events are the worker's, the
same for all three:

* ``process`` (the default): :class:`~fleetflow_worker._pool.TaskProcessPool`,
  one killable process per attempt; hard timeouts, memory limits, usage.
* ``thread``: :class:`ThreadExecutor`, for I/O-bound sync code: attempts run in
  threads of the worker's own process (no process start, no pickling of
  arguments and results across a pipe). Python cannot stop a thread, so a
  timed-out or cancelled attempt is *abandoned*: it reports at once (the
  timeout) or nothing (the cancel), its slot frees, and the thread runs on
  until the code returns, its result dropped. Memory limits are not enforced.
* ``dask``: :class:`~fleetflow_worker._dask.DaskExecutor`, each attempt (or
  batch) a future on an existing Dask cluster; see that module.

``async def`` tasks run on the worker's event loop whichever executor is chosen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fleetflow.execution import Task, attempt_scope

from fleetflow_worker._batch import BatchItem, PoolResult, retrieve
from fleetflow_worker._child import run_task
from fleetflow_worker._codec import StoreContext, WireArg, encode_error
from fleetflow_worker._pool import TaskProcessPool
from fleetflow_worker._usage import AttemptUsage
from fleetflow_worker.errors import TaskTimeout

__all__ = ["Executor", "ThreadExecutor", "make_executor", "run_one", "EXECUTORS"]

#: The executors ``--executor`` accepts.
EXECUTORS = ("process", "thread", "dask")


class Executor(Protocol):
    """What :class:`~fleetflow_worker._execute.AttemptRunner` needs of an executor."""

    #: ``process``, ``thread`` or ``dask``.
    name: str

    async def start(self) -> None:
        """Get ready (start processes, connect); raises PoolStartError if it cannot."""

    async def capacity(self) -> dict[str, float] | None:
        """The capacity to offer now (a cluster's); None: the worker's own settings."""

    async def run(
        self,
        task_name: str,
        args: Sequence[WireArg],
        split_result: bool,
        *,
        timeout_s: float = 0.0,
        memory_request_bytes: float = 0.0,
        skip: Callable[[], bool] | None = None,
        log_ids: Mapping[str, Any] | None = None,
        store: StoreContext | None = None,
        resources: Mapping[str, float] | None = None,
        gpu: float = 0.0,
    ) -> PoolResult | None:
        """Run one attempt; None when skipped (cancelled)."""

    async def run_batch(
        self,
        task_name: str,
        items: Sequence[BatchItem],
        *,
        timeout_s: float = 0.0,
        memory_request_bytes: float = 0.0,
        cancelled: Callable[[int], bool],
        on_result: Callable[[int, PoolResult], None],
        poke: asyncio.Event | None = None,
        resources: Mapping[str, float] | None = None,
        gpu: float = 0.0,
    ) -> None:
        """Run a batch's members in order (see TaskProcessPool.run_batch)."""

    def kill(self) -> None:
        """Stop everything now; later runs raise RuntimeError."""

    async def close(self) -> None:
        """Release processes, threads or connections."""


async def run_one(
    executor: Executor,
    task_name: str,
    args: Sequence[WireArg],
    split_result: bool,
    *,
    skip: Callable[[], bool] | None = None,
    log_ids: Mapping[str, Any] | None = None,
    store: StoreContext | None = None,
    **limits: Any,
) -> PoolResult | None:
    """One attempt as a batch of one (``run`` of the thread and Dask executors)."""
    results: list[PoolResult] = []
    await executor.run_batch(
        task_name,
        [BatchItem(args, split_result, log_ids or {}, store)],
        cancelled=lambda _: skip is not None and skip(),
        on_result=lambda _, result: results.append(result),
        **limits,
    )
    return results[0] if results else None


def run_member(tasks: Mapping[str, Task], task_name: str, item: BatchItem) -> PoolResult:
    """Run one member in this thread: its ids bound to its log lines, its CPU and wall time."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    with attempt_scope(item.log_ids):
        payload = run_task(task_name, item.args, item.split_result, dict(tasks), item.store)
    usage = AttemptUsage(time.thread_time() - cpu_started, 0.0)
    return PoolResult(payload, usage, duration_s=time.perf_counter() - started)


class ThreadExecutor:
    """Runs plain ``def`` attempts in threads of the worker's process.

    Args:
        tasks: ``{task_name: Task}`` of the worker (loaded in this process).
        max_threads: Most threads at once; abandoned attempts hold theirs
            until their code returns.
    """

    name = "thread"

    def __init__(self, tasks: Mapping[str, Task], max_threads: int) -> None:
        self.tasks = dict(tasks)
        self._threads = ThreadPoolExecutor(max(1, max_threads), thread_name_prefix="fleetflow-task")
        self._closed = False

    async def start(self) -> None:
        """Nothing to start: threads are made as attempts need them."""

    async def capacity(self) -> dict[str, float] | None:
        """The worker's own settings."""
        return None

    async def run(self, task_name: str, args: Sequence[WireArg], split_result: bool, **kw: Any):
        """Run one attempt (see :meth:`TaskProcessPool.run`)."""
        return await run_one(self, task_name, args, split_result, **kw)

    async def run_batch(
        self,
        task_name: str,
        items: Sequence[BatchItem],
        *,
        timeout_s: float = 0.0,
        memory_request_bytes: float = 0.0,
        cancelled: Callable[[int], bool],
        on_result: Callable[[int, PoolResult], None],
        poke: asyncio.Event | None = None,
        resources: Mapping[str, float] | None = None,
        gpu: float = 0.0,
    ) -> None:
        """Run the members one after another, each in a thread, each with its own timeout.

        ``gpu`` is not allocated to threads: GPU tasks want the process executor.
        """
        for i, item in enumerate(items):
            if cancelled(i):
                continue
            if self._closed:
                raise RuntimeError("the thread executor is closed")
            result = await self._member(task_name, item, timeout_s, lambda i=i: cancelled(i), poke)
            if result is not None and not cancelled(i):
                on_result(i, result)

    async def _member(
        self,
        task_name: str,
        item: BatchItem,
        timeout_s: float,
        cancelled: Callable[[], bool],
        poke: asyncio.Event | None,
    ) -> PoolResult | None:
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._threads, run_member, self.tasks, task_name, item)
        call.add_done_callback(retrieve)  # an abandoned call's error is moot
        deadline = loop.time() + timeout_s if timeout_s > 0 else None
        while not call.done():
            waiters: list[asyncio.Future[Any]] = [call]
            poked = asyncio.ensure_future(poke.wait()) if poke is not None else None
            if poked is not None:
                waiters.append(poked)
            wait_s = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if poked is not None:
                    poked.cancel()
            if call.done():
                break
            if poke is not None and poke.is_set():
                poke.clear()
            if cancelled():
                return None  # abandoned: the thread runs on, its result dropped
            if deadline is not None and loop.time() >= deadline:
                error = encode_error(TaskTimeout(task_name, timeout_s))
                return PoolResult(error, timed_out=True, duration_s=timeout_s)
        return call.result()

    def kill(self) -> None:
        """Start no more attempts (running threads cannot be stopped)."""
        self._closed = True

    async def close(self) -> None:
        """Stop taking attempts; threads still running are left to finish on their own."""
        self.kill()
        self._threads.shutdown(wait=False, cancel_futures=True)


def make_executor(
    settings: Any, tasks: Mapping[str, Task], module_specs: Sequence[str], **pool_options: Any
):
    """The executor ``settings.executor`` names (a :class:`WorkerSettings`).

    ``pool_options`` go to the process pool only (its GPU slots and sampler).

    Raises:
        ValueError: an unknown executor.
    """
    from fleetflow_worker.logs import configured_level

    if settings.executor == "thread":
        return ThreadExecutor(tasks, settings.max_concurrency)
    if settings.executor == "dask":
        from fleetflow_worker._dask import DaskExecutor

        return DaskExecutor(settings.dask_address, settings.dask_options, module_specs)
    if settings.executor != "process":
        raise ValueError(f"unknown executor {settings.executor!r}; choose from {EXECUTORS}")
    return TaskProcessPool(
        settings.pool_size,
        module_specs,
        max_size=settings.max_concurrency,
        nice=settings.task_nice,
        sample_interval_s=settings.usage_sample_s,
        memory_margin_fraction=settings.memory_margin_fraction,
        memory_margin_bytes=settings.memory_margin_bytes,
        log_level=configured_level(),
        fingerprints={name: task.fingerprint for name, task in tasks.items()},
        **pool_options,
    )
