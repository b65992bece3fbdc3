"""The ``dask`` executor: attempts run on an existing Dask cluster (``distributed.Client``).

The fleetflow worker leases as usual and reports outcomes (fencing, retries
and events are unchanged); only the execution of plain ``def`` attempts moves
to the cluster:

* **one future per lease batch**: a batch of short task runs is one call of
  :func:`~fleetflow_worker._dask_remote.run_members`, not one future per tiny
  task; a single attempt is a batch of one;
* **capacity is the cluster's**: ``cpu`` is the sum of the Dask workers'
  threads, ``memory`` the sum of their memory limits, and each Dask worker
  resource (``--resources GPU=1``) is the fleetflow custom resource of the
  same name; :meth:`DaskExecutor.capacity` reads it from the scheduler at each
  heartbeat, so it follows Dask workers as they join and leave. An attempt's
  custom resources are asked of Dask too (``resources=``), so it runs on a
  Dask worker that has them;
* **timeouts and cancels cancel the future**: past ``timeout_s`` a single
  attempt reports :class:`~fleetflow_worker.errors.TaskTimeout` and its future
  is cancelled; a batch that runs past ``timeout_s`` per member is cancelled
  and its members run again one future each, so only a member that is slow
  on its own times out (at-least-once, as a killed task process's members).
  Dask cannot interrupt a running thread: a cancelled future's code runs on
  until it returns, and its result is dropped;
* **a Dask worker's death is an infrastructure failure**: at each heartbeat
  the executor also asks the scheduler which Dask worker each of its futures
  is processing on; a future whose Dask worker has left the cluster since is
  cancelled, and so is a future that fails by itself (``KilledWorker``, or any
  error of the future; task errors travel in the payload, never as the
  future's error). Every member without a result then reports
  :class:`~fleetflow_worker.errors.DaskWorkerLost`, an infrastructure failure
  the coordinator retries as for a dead task process. A death between two
  heartbeats of a future not yet seen there is left to Dask, which moves the
  task to another worker up to its ``distributed.scheduler.allowed-failures``
  (3 by default) and then fails it (``KilledWorker``).

Memory requests are placed against the cluster's memory; Dask's own worker
memory limits enforce them (a worker its nanny restarts is a death, above).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from fleetflow_worker._batch import BatchItem, PoolResult
from fleetflow_worker._codec import WireArg, encode_error
from fleetflow_worker._dask_remote import load, run_members
from fleetflow_worker._executors import run_one
from fleetflow_worker._process import PoolStartError
from fleetflow_worker._usage import AttemptUsage
from fleetflow_worker.errors import DaskWorkerLost, TaskTimeout

__all__ = ["DaskExecutor", "cluster_capacity"]

log = structlog.get_logger()

#: Capacity names a Dask worker resource may not take (they have their own meaning).
_RESERVED = ("cpu", "memory")


def cluster_capacity(identity: Mapping[str, Any]) -> dict[str, float]:
    """Capacity of a Dask cluster from its scheduler's ``identity()``.

    Returns:
        ``{"cpu": threads, "memory": bytes, **resources}`` summed over its workers.
    """
    cpu, memory = 0.0, 0.0
    resources: dict[str, float] = {}
    for worker in identity.get("workers", {}).values():
        cpu += float(worker.get("nthreads") or 0)
        memory += float(worker.get("memory_limit") or 0)
        for name, amount in (worker.get("resources") or {}).items():
            if name not in _RESERVED:
                resources[name] = resources.get(name, 0.0) + float(amount)
    return {"cpu": cpu, "memory": memory, **resources}


class DaskExecutor:
    """Runs plain ``def`` attempts as futures on a Dask cluster (see the module docstring).

    Args:
        address: The Dask scheduler, ``tcp://HOST:PORT``.
        options: Keyword arguments of ``distributed.Client`` (``timeout``...).
        module_specs: The worker's ``--module`` values; importable on the
            Dask workers too.
    """

    name = "dask"

    def __init__(
        self, address: str, options: Mapping[str, Any], module_specs: Sequence[str]
    ) -> None:
        self.address = address
        self.options = dict(options)
        self.module_specs = tuple(module_specs)
        self.client: Any = None
        #: {future key: set when the Dask worker it was seen processing on left}
        self._inflight: dict[str, asyncio.Event] = {}
        #: {future key: the Dask worker it was last seen processing on}
        self._seen_on: dict[str, str] = {}
        #: Futures cancelled in the background, kept referenced until done.
        self._background: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def start(self) -> None:
        """Connect to the scheduler and import the user modules on its workers.

        Raises:
            PoolStartError: the scheduler cannot be reached, or a module
                fails to import on a Dask worker.
        """
        try:
            from distributed import Client
        except ImportError as exc:
            raise PoolStartError(
                "the dask executor needs distributed: pip install 'fleetflow[dask]'"
            ) from exc
        options = {"timeout": 10, **self.options}
        try:
            self.client = await Client(self.address, asynchronous=True, **options)
        except (OSError, TimeoutError) as exc:
            raise PoolStartError(
                f"cannot reach the Dask scheduler at {self.address}: {exc}"
            ) from None
        try:  # every Dask worker there now; later ones import on first use
            await self.client.run(load, list(self.module_specs))
        except Exception as exc:  # noqa: BLE001 - any import error, as Dask relays it
            await self.close()
            raise PoolStartError(
                f"a --module failed to import on a Dask worker of {self.address}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        log.info("dask_executor_connected", scheduler=self.address)

    async def capacity(self) -> dict[str, float] | None:
        """The cluster's capacity now (asked of the scheduler); also spots lost Dask workers."""
        if self.client is None:
            return None
        # Where the futures run first, then who is alive: a Dask worker that
        # joins between the two calls is never taken for one that left.
        processing = await self.client.scheduler.processing() if self._inflight else {}
        identity = await self.client.scheduler.identity(n_workers=-1)
        self._note_lost_workers(processing, set(identity.get("workers", {})))
        return cluster_capacity(identity)

    def _note_lost_workers(self, processing: Mapping[str, Any], alive: set[str]) -> None:
        """Wake the futures whose Dask worker left the cluster since they were seen on it.

        Checked before the new sightings are noted: Dask may already have
        moved the task to another worker.
        """
        for key, worker in list(self._seen_on.items()):
            lost = self._inflight.get(key)
            if lost is None:
                del self._seen_on[key]
            elif worker not in alive:
                lost.set()
        for worker, keys in processing.items():
            for key in keys:
                lost = self._inflight.get(key)
                if lost is not None and not lost.is_set():
                    self._seen_on[key] = worker

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
        """Run the members as one future; see the module docstring for limits and failures.

        A ``gpu`` request is asked of Dask as the resource ``gpu`` when the
        cluster has it (it is in ``resources`` too).
        """
        todo = [i for i in range(len(items)) if not cancelled(i)]
        if not todo:
            return
        if self._closed or self.client is None:
            raise RuntimeError("the dask executor is closed")
        wanted = {k: v for k, v in (resources or {}).items() if k not in _RESERVED and v > 0}
        budget_s = timeout_s * len(todo) if timeout_s > 0 else 0.0
        ended = await self._one_future(task_name, items, todo, budget_s, wanted, cancelled, poke)
        if ended is None:
            return  # every member was cancelled
        if ended == "timeout":
            if len(todo) == 1:
                error = encode_error(TaskTimeout(task_name, timeout_s))
                on_result(todo[0], PoolResult(error, timed_out=True, duration_s=timeout_s))
                return
            log.info("dask_batch_timed_out", task_name=task_name, members=len(todo))
            for i in todo:  # each on its own now, so only a slow one times out
                if not cancelled(i):
                    await self.run_batch(
                        task_name,
                        [items[i]],
                        timeout_s=timeout_s,
                        cancelled=lambda _, i=i: cancelled(i),
                        on_result=lambda _, result, i=i: on_result(i, result),
                        poke=poke,
                        resources=resources,
                    )
            return
        if isinstance(ended, BaseException):
            failed = PoolResult(encode_error(ended, infrastructure=True), infrastructure=True)
            for i in todo:
                if not cancelled(i):
                    on_result(i, failed)
            return
        for i, (payload, cpu_s, duration_s) in zip(todo, ended, strict=True):
            if not cancelled(i):
                on_result(i, PoolResult(payload, AttemptUsage(cpu_s, 0.0), duration_s=duration_s))

    async def _one_future(
        self,
        task_name: str,
        items: Sequence[BatchItem],
        todo: list[int],
        budget_s: float,
        resources: Mapping[str, float],
        cancelled: Callable[[int], bool],
        poke: asyncio.Event | None,
    ) -> list[tuple] | str | BaseException | None:
        """Submit ``todo`` as one future and wait for it.

        Returns:
            The members' results; ``"timeout"``; the future's own error (an
            infrastructure failure); or None when every member was cancelled.
        """
        requests = [
            (task_name, list(items[i].args), items[i].split_result, dict(items[i].log_ids),
             items[i].store)
            for i in todo
        ]  # fmt: skip
        key = f"fleetflow-{task_name}-{uuid.uuid4().hex}"
        future = self.client.submit(
            run_members,
            self.module_specs,
            requests,
            key=key,
            resources=dict(resources) or None,
            pure=False,
        )
        waiting = asyncio.ensure_future(_result(future))
        lost = self._inflight[key] = asyncio.Event()
        gone = asyncio.ensure_future(lost.wait())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s if budget_s > 0 else None
        try:
            while not waiting.done():
                poked = asyncio.ensure_future(poke.wait()) if poke is not None else None
                waiters = [waiting, gone] if poked is None else [waiting, gone, poked]
                wait_s = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if poked is not None:
                        poked.cancel()
                if waiting.done():
                    break
                if lost.is_set():
                    self._cancel(future, waiting)
                    where = self._seen_on.get(key, "?")
                    return DaskWorkerLost(f"Dask worker {where} left while it held the attempt")
                if poke is not None and poke.is_set():
                    poke.clear()
                if all(cancelled(i) for i in todo):
                    self._cancel(future, waiting)
                    return None
                if deadline is not None and loop.time() >= deadline:
                    self._cancel(future, waiting)
                    return "timeout"
        except asyncio.CancelledError:
            self._cancel(future, waiting)
            raise
        finally:
            gone.cancel()
            self._inflight.pop(key, None)
            self._seen_on.pop(key, None)
        return waiting.result()

    def _cancel(self, future: Any, waiting: asyncio.Future[Any]) -> None:
        """Cancel a Dask future in the background (its thread, if running, runs on)."""
        waiting.cancel()
        if self.client is None or self.client.status in ("closing", "closed"):
            return
        cancelling = asyncio.ensure_future(self.client.cancel([future]))
        self._background.add(cancelling)
        cancelling.add_done_callback(self._background.discard)
        cancelling.add_done_callback(lambda f: f.cancelled() or f.exception())

    def kill(self) -> None:
        """Start no more attempts; running futures are cancelled by their callers."""
        self._closed = True

    async def close(self) -> None:
        """Close the connection to the scheduler (the cluster itself keeps running)."""
        self.kill()
        await asyncio.gather(*self._background, return_exceptions=True)
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def _result(future: Any) -> list[tuple] | BaseException:
    """The future's result, or its own error (a Dask worker died, it was lost...)."""
    try:
        return await future
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError of Dask, comm errors
        name = type(exc).__name__
        return DaskWorkerLost(f"{name}: {exc}")
