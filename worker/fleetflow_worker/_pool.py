"""The task processes that run plain ``def`` tasks, one attempt per process at a time.

The pool has ``size`` *seats*. A seat holds one task process (started from a
forkserver: the worker has a live gRPC channel and threads, and gRPC is not
fork-safe, so a plain ``fork`` is never used) and a pipe to it. An attempt
takes a free seat, sends its request down the pipe and reads the answer on
the event loop (:mod:`fleetflow_worker._channel`: no thread per attempt),
while the loop samples the process every ``sample_interval_s`` seconds. So
every attempt can be stopped on its own:

* past its ``timeout_s`` the process is SIGKILLed and the attempt ends with
  :class:`~fleetflow_worker.errors.TaskTimeout` (no code after the blocking
  call, and no ``finally`` block, runs in the task);
* above its memory limit (:func:`~fleetflow_worker._usage.memory_limit_bytes`)
  it is SIGKILLed and ends with :class:`~fleetflow_worker.errors.MemoryLimitExceeded`;
* cancelling the coroutine awaiting :meth:`TaskProcessPool.run` SIGKILLs it;
* a process that dies on its own fails only its own attempt
  (:class:`~fleetflow_worker.errors.TaskProcessDied`).

A killed or dead process is replaced at once, in the background, so the seat
is free again immediately; the next attempt on it waits for the new process.

Seats are not interchangeable: a process keeps what earlier attempts loaded,
so an attempt takes the seat that last ran its task when one is free, and an
attempt that requests ``gpu`` gets specific devices, exported to its process
as ``CUDA_VISIBLE_DEVICES`` (see :mod:`fleetflow_worker._seats` and
:mod:`fleetflow_worker.devices`). Devices come back when the attempt ends,
however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from fleetflow_worker._batch import BatchItem, BatchLimits, BatchPass, PoolResult, retrieve
from fleetflow_worker._codec import StoreContext, WireArg, encode_error
from fleetflow_worker._gpu_usage import GpuMeter, GpuSampler
from fleetflow_worker._process import PoolStartError, TaskProcess, live_pids
from fleetflow_worker._seats import Pick, Seat, pick
from fleetflow_worker._usage import memory_limit_bytes
from fleetflow_worker.devices import Allocation, DeviceAllocator

__all__ = ["TaskProcessPool", "PoolResult", "PoolStartError", "BatchItem"]

log = structlog.get_logger()


class TaskProcessPool:
    """Runs attempts of plain ``def`` tasks, each in its own killable process.

    When every seat is busy and fewer than ``max_size`` exist, an attempt gets
    a new seat and process rather than waiting (the coordinator already
    checked that the attempt fits the worker's capacity, e.g. two
    ``cpu=0.5`` tasks per CPU); such a surplus seat is closed when its
    attempt ends.

    Args:
        size: Number of seats kept warm (processes started by :meth:`start`).
        max_size: Most seats at once; an attempt beyond waits for a free one.
            Default ``size``.
        module_specs: User modules each process imports (``--module`` values).
        mp_context: multiprocessing context; ``forkserver`` by default.
        nice: Niceness added to task processes (0: same priority as the worker).
        sample_interval_s: How often a running attempt's process is sampled
            for its memory limit and usage, seconds.
        memory_margin_fraction: Relative margin above a memory request before
            a kill (0.2: 20 %).
        memory_margin_bytes: Fixed margin above a memory request, bytes.
        start_timeout_s: Longest a new process may take to import the modules, seconds.
        log_level: Task processes configure structlog like the worker, at this
            level; None leaves their logging alone.
        gpu_slots: One GPU device id per unit of the worker's ``gpu``
            capacity (:attr:`fleetflow_worker.gpus.GpuPlan.slots`); none: a
            worker without GPUs, whose processes' environment is left alone.
        gpu_sampler: Measures the GPU use of attempts' processes (None: not measured).
        fingerprints: ``{task name: fingerprint}`` the worker registered with;
            a process that imported other code (the module was edited since)
            fails to start (:class:`PoolStartError`) rather than run it.
    """

    #: The executor's name (``--executor process``, see :mod:`fleetflow_worker._executors`).
    name = "process"

    def __init__(
        self,
        size: int,
        module_specs: Sequence[str],
        *,
        max_size: int | None = None,
        mp_context: BaseContext | None = None,
        nice: int = 0,
        sample_interval_s: float = 0.1,
        memory_margin_fraction: float = 0.2,
        memory_margin_bytes: float = 50 * 2**20,
        start_timeout_s: float = 120.0,
        log_level: str | None = None,
        gpu_slots: Sequence[str] = (),
        gpu_sampler: GpuSampler | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> None:
        self.size = max(1, size)
        self.max_size = max(self.size, max_size or 0)
        self._module_specs = list(module_specs)
        #: {task name: fingerprint} the worker registered: processes must match.
        self._fingerprints = dict(fingerprints or {})
        self._ctx = mp_context or multiprocessing.get_context("forkserver")
        self.nice = nice
        self.sample_interval_s = sample_interval_s
        self.memory_margin_fraction = memory_margin_fraction
        self.memory_margin_bytes = memory_margin_bytes
        self.start_timeout_s = start_timeout_s
        self.log_level = log_level
        self._seat_list = [Seat() for _ in range(self.size)]
        #: Seats no attempt holds, in the order they were freed.
        self._free: list[Seat] = list(self._seat_list)
        #: Woken (all of them) whenever a seat is freed or devices come back.
        self._wakers: list[asyncio.Future[None]] = []
        #: Which devices each running attempt holds.
        self.devices = DeviceAllocator(gpu_slots)
        self.gpu_sampler = gpu_sampler
        #: Set in a GPU attempt's process besides CUDA_VISIBLE_DEVICES: CUDA then
        #: numbers devices as NVML does (unless the worker's environment chose).
        self._device_order = (
            {} if "CUDA_DEVICE_ORDER" in os.environ else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        )
        #: Threads for process starts and reaps.
        self._io = ThreadPoolExecutor(2 * self.max_size + 2, thread_name_prefix="fleetflow-pool")
        #: Every process started and not yet reaped (including ones still starting).
        self._processes: set[BaseProcess] = set()
        #: Background reaps and replacements, kept referenced until done.
        self._background: set[asyncio.Future[object]] = set()
        #: Attempts waiting for a seat (all ``max_size`` are busy).
        self._waiting = 0
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the live task processes, for tests and diagnostics."""
        return live_pids(self._processes)

    async def capacity(self) -> dict[str, float] | None:
        """None: the worker offers its own settings' capacity."""
        return None

    async def start(self) -> None:
        """Start every process and check that it imports the user modules.

        Raises:
            PoolStartError: a process failed to start or to import a module.
        """
        for seat in self._seat_list:
            if seat.proc is None and seat.spawning is None:
                self._start_spawn(seat)
        results = await asyncio.gather(
            *(s.spawning for s in self._seat_list if s.spawning), return_exceptions=True
        )
        for seat in self._seat_list:
            if seat.spawning is not None and seat.spawning.done():
                if seat.spawning.exception() is None:
                    seat.proc = seat.spawning.result()
                seat.spawning = None
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise PoolStartError(
                "the task processes failed to start; run the worker's --module imports "
                f"in a fresh interpreter to see why ({errors[0]})"
            ) from errors[0]

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
        gpu: float = 0.0,
        resources: Mapping[str, float] | None = None,
    ) -> PoolResult | None:
        """Run one attempt in a task process once a seat is free.

        A batch of one (:meth:`run_batch`): the process measures the attempt's
        CPU time, wall time and peak memory itself, so a short attempt costs
        the worker no ``/proc`` reads. Cancelling the caller kills the process
        (and frees the seat) at once.

        Args:
            task_name: Registered task name.
            args: Pickled arguments as leased.
            split_result: Return the result item by item.
            timeout_s: Hard time limit in seconds (0: none).
            memory_request_bytes: The task's memory request, bytes (0: no limit).
            skip: Asked once a seat is free, and while the attempt runs; if it
                returns True the attempt does not start (or its process is
                killed) and None is returned.
            log_ids: Bound to every log line of the attempt in its process
                (``flow_run_id``, ``task_run_id``, ``attempt``, ``worker_id``...).
            store: Where stored inputs are read and large results written.
            gpu: The attempt's ``gpu`` request (0: none).
            resources: The attempt's custom resources (a Dask executor asks
                its cluster for them; the pool has nothing to do with them).

        Returns:
            How the attempt ended, or None when skipped.

        Raises:
            RuntimeError: the pool is closed.
        """
        results: list[PoolResult] = []
        await self.run_batch(
            task_name,
            [BatchItem(args, split_result, log_ids or {}, store)],
            timeout_s=timeout_s,
            memory_request_bytes=memory_request_bytes,
            cancelled=lambda _: skip is not None and skip(),
            on_result=lambda _, result: results.append(result),
            gpu=gpu,
        )
        return results[0] if results else None

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
        gpu: float = 0.0,
        resources: Mapping[str, float] | None = None,
    ) -> None:
        """Run a batch's members one after another in one task process (one seat).

        The members go down the pipe in one message and their results come
        back in a few (:func:`~fleetflow_worker._child.run_batch`), so a
        member costs no pipe round trip of its own. Each member still has its
        own time limit, and every rule of :meth:`run` holds per member: the
        member that runs past ``timeout_s``, grows past its memory limit or
        is cancelled has its process killed; the members after it go on in
        the seat's new process. Members that finished but whose results were
        lost with a killed process run again there (at-least-once).

        Args:
            task_name: Registered task name (the same for every member).
            items: The members, in the order they run.
            timeout_s: Each member's hard time limit, seconds (0: none).
            memory_request_bytes: The task's memory request, bytes (0: no limit).
            cancelled: ``cancelled(i)`` says member ``i`` no longer needs to
                run; it gets no result. Asked before a member is sent and
                while it runs.
            on_result: Called once with ``(i, result)`` for each member that
                ended (not for cancelled ones), in order, on the event loop.
            poke: Set by the caller when it cancels a member, so a running
                one is stopped at once rather than at the next sample.
            gpu: The ``gpu`` request of the batch (one allocation for all
                members): that many devices, or a share of one, held from
                the seat's start to the batch's end.
            resources: See :meth:`run`.

        Raises:
            RuntimeError: the pool is closed.
        """
        limits = BatchLimits(
            timeout_s,
            memory_request_bytes,
            memory_limit_bytes(
                memory_request_bytes, self.memory_margin_fraction, self.memory_margin_bytes
            ),
            self.sample_interval_s,
        )
        taken = await self._take_seat(task_name, gpu, cancelled if len(items) == 1 else None)
        if taken is None:
            return  # cancelled while waiting for devices
        seat = taken.seat
        meter = self._gpu_meter(taken.devices)
        if meter is not None:
            on_result = _with_gpu_use(on_result, meter, taken.devices)
        elif taken.devices.ids:
            on_result = _with_gpu_use(on_result, None, taken.devices)
        try:
            todo = list(range(len(items)))
            while todo:
                todo = [i for i in todo if not cancelled(i)]
                if not todo:
                    return
                if self._closed:
                    raise RuntimeError("the task process pool is closed")
                try:
                    proc = await self._process_for(seat, taken.binding)
                except PoolStartError as exc:
                    for i in todo:
                        on_result(i, PoolResult(encode_error(exc), infrastructure=True))
                    return
                seat.last_task, seat.last_used = task_name, time.monotonic()
                one_pass = BatchPass(
                    proc, task_name, items, todo, limits, cancelled, on_result, gpu=meter
                )
                env = self._env(taken.binding)
                todo = await one_pass.run(lambda: self._replace(seat), poke, env)
        finally:
            self.devices.release(taken.devices)
            self._give_back(seat)

    async def _take_seat(
        self, task_name: str, gpu: float, cancelled: Callable[[int], bool] | None = None
    ) -> Pick | None:
        """A free seat (or a new surplus one) and the attempt's devices, once both are free.

        Args:
            task_name: The attempt's task (its warm seat is preferred).
            gpu: Its ``gpu`` request.
            cancelled: For a single attempt: stop waiting once ``cancelled(0)``.

        Returns:
            The seat and devices, or None when the attempt was cancelled while waiting.

        Raises:
            RuntimeError: the pool is closed, or ``gpu`` can never fit its devices.
        """
        self._check_fits(gpu)
        while True:
            if self._closed:
                raise RuntimeError("the task process pool is closed")
            can_grow = len(self._seat_list) < self.max_size
            taken = pick(self._free, task_name, gpu, self.devices, can_grow)
            if taken is not None:
                if taken.fresh:
                    self._seat_list.append(taken.seat)
                else:
                    self._free.remove(taken.seat)
                return taken
            if cancelled is not None and cancelled(0):
                return None
            await self._wait_for_change()

    async def hold_devices(self, gpu: float) -> Allocation:
        """Devices for an attempt that runs outside the pool (``async def``), once free.

        The caller gives them back with :meth:`release_devices`.

        Raises:
            RuntimeError: the pool is closed, or ``gpu`` can never fit its devices.
        """
        self._check_fits(gpu)
        while True:
            if self._closed:
                raise RuntimeError("the task process pool is closed")
            held = self.devices.acquire(gpu)
            if held is not None:
                return held
            await self._wait_for_change()

    def _check_fits(self, gpu: float) -> None:
        """Refuse a request these devices can never hold, rather than wait for ever.

        Raises:
            RuntimeError: ``gpu`` is more than the devices (the attempt fails
                as an infrastructure failure and may run elsewhere).
        """
        if not self.devices.could_hold(gpu):
            raise RuntimeError(
                f"gpu={gpu:g} cannot fit this worker's {len(self.devices.slots)} GPU device "
                "slot(s): it would wait for ever"
            )

    def release_devices(self, held: Allocation) -> None:
        """Give back what :meth:`hold_devices` returned."""
        self.devices.release(held)
        self._wake()

    async def _wait_for_change(self) -> None:
        """Until a seat is freed or devices come back (bounded: callers check again)."""
        waker = asyncio.get_running_loop().create_future()
        self._wakers.append(waker)
        self._waiting += 1
        try:
            # Bounded, so a cancelled single attempt stops waiting soon.
            await asyncio.wait([waker], timeout=self.sample_interval_s * 5)
        finally:
            self._waiting -= 1
            if waker in self._wakers:
                self._wakers.remove(waker)

    def _wake(self) -> None:
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)

    def _give_back(self, seat: Seat) -> None:
        if seat.core or self._waiting:
            self._free.append(seat)
        else:
            self._retire(seat)
        self._wake()

    def _env(self, binding: str | None) -> dict[str, str] | None:
        """Environment an attempt's process runs it with (None: left alone)."""
        if binding is None:
            return None
        return {"CUDA_VISIBLE_DEVICES": binding, **self._device_order}

    def _gpu_meter(self, devices: Allocation) -> GpuMeter | None:
        if self.gpu_sampler is None or not devices.ids:
            return None
        return GpuMeter(self.gpu_sampler, devices.ids)

    async def _process_for(self, seat: Seat, binding: str | None = None) -> TaskProcess:
        """The seat's live process, waiting for (or starting) a replacement if needed.

        A GPU attempt's process is started with its ``CUDA_VISIBLE_DEVICES``
        already set, before it imports the user modules (CUDA reads it once,
        and a module may touch CUDA as it is imported); a process (live or
        starting) started for other devices, or for none, is replaced first.
        Processes started without a binding (the pool's first ones, a core
        seat's replacement) keep the worker's environment, so modules that
        need a GPU at import still load; CPU attempts run there with
        ``CUDA_VISIBLE_DEVICES=""`` set per batch.
        """
        started = seat.proc is not None or seat.spawning is not None
        cpu_in_unbound = binding == "" and seat.bound is None
        if binding is not None and seat.bound != binding and started and not cpu_in_unbound:
            self._replace(seat, respawn=binding)
        if seat.proc is not None:
            if seat.proc.alive():
                if binding is not None:
                    seat.bound = binding
                return seat.proc
            self._replace(seat, respawn=binding)  # died while idle
        if seat.spawning is None:
            self._start_spawn(seat, binding)
        spawning = seat.spawning
        assert spawning is not None
        try:
            proc = await asyncio.shield(spawning)
        except PoolStartError:
            if seat.spawning is spawning:
                seat.spawning = None
            raise
        if seat.spawning is spawning:
            seat.proc, seat.spawning = proc, None
        if binding is not None:
            seat.bound = binding
        return proc

    def _start_spawn(self, seat: Seat, binding: str | None = None) -> None:
        """Start the seat's next process, with ``binding`` set before its imports (None: none)."""
        seat.spawning = self._spawn(binding)
        seat.bound = binding

    def _replace(self, seat: Seat, respawn: str | None = None) -> asyncio.Future[int | None]:
        """Kill the seat's process, reap it and start a replacement, all in the background.

        Args:
            seat: The seat.
            respawn: Start the replacement for these devices (a process
                already starting for others is discarded); None: a core seat
                gets one with the worker's environment, a surplus seat none.

        Returns:
            A future of the old process's exit code.
        """
        loop = asyncio.get_running_loop()
        old, seat.proc = seat.proc, None
        seat.forget()
        if respawn is not None and seat.spawning is not None:
            seat.spawning.add_done_callback(self._discard_started)
            seat.spawning = None
        if old is None:
            reaped: asyncio.Future[int | None] = loop.create_future()
            reaped.set_result(None)
        else:
            old.kill()
            reaped = self._reap_later(old)
        if not self._closed and (seat.core or respawn is not None) and seat.spawning is None:
            self._start_spawn(seat, respawn)
        return reaped

    def _retire(self, seat: Seat) -> None:
        """Close a surplus seat: stop its process, and the one it may still be starting."""
        self._seat_list.remove(seat)
        if seat in self._free:
            self._free.remove(seat)
        self._replace(seat)
        if seat.spawning is not None:
            seat.spawning.add_done_callback(self._discard_started)
            seat.spawning = None

    def _discard_started(self, spawning: asyncio.Future[TaskProcess]) -> None:
        if spawning.cancelled() or spawning.exception() is not None:
            return
        proc = spawning.result()
        proc.kill()
        with contextlib.suppress(RuntimeError):  # the pool closed meanwhile: kill() was enough
            self._reap_later(proc)

    def _reap_later(self, proc: TaskProcess) -> asyncio.Future[int | None]:
        """Reap a killed process in a thread, then close its loop channel (on the loop)."""
        reaped = asyncio.get_running_loop().run_in_executor(self._io, self._reap, proc)
        reaped.add_done_callback(lambda _: proc.channel.close())
        self._keep(reaped)
        return reaped

    def _reap(self, proc: TaskProcess) -> int | None:
        exitcode = proc.reap(5.0)
        self._processes.discard(proc.process)
        return exitcode

    def _spawn(self, binding: str | None = None) -> asyncio.Future[TaskProcess]:
        env = self._env(binding)
        future = asyncio.get_running_loop().run_in_executor(self._io, self._spawn_blocking, env)
        self._keep(future)
        return future

    def _keep(self, future: asyncio.Future) -> None:  # type: ignore[type-arg]
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        future.add_done_callback(retrieve)

    def _spawn_blocking(self, env: Mapping[str, str] | None = None) -> TaskProcess:
        if self._closed:
            raise PoolStartError("the task process pool is closed")
        return TaskProcess.start(
            self._ctx,
            self._module_specs,
            self.nice,
            self.start_timeout_s,
            self._processes,
            self.log_level,
            self._fingerprints,
            env,
        )

    def kill(self) -> None:
        """SIGKILL every task process now and start no more.

        Running attempts end as if their process died; later :meth:`run`
        calls raise ``RuntimeError``.
        """
        self._closed = True
        for seat in self._seat_list:
            if seat.proc is not None:
                seat.proc.kill()  # with the processes its attempt started
        for process in list(self._processes):
            with contextlib.suppress(OSError, ValueError):
                process.kill()

    async def close(self) -> None:
        """Stop every task process (killing any that still runs) and release threads."""
        self.kill()
        spawning = [s.spawning for s in self._seat_list if s.spawning is not None]
        await asyncio.gather(*spawning, *self._background, return_exceptions=True)
        procs = [s.proc for s in self._seat_list if s.proc is not None]
        procs += [f.result() for f in spawning if not f.exception()]
        for seat in self._seat_list:
            seat.proc = seat.spawning = None
        for proc in procs:
            proc.kill()
        await asyncio.gather(*(asyncio.to_thread(self._reap, p) for p in procs))
        for proc in procs:
            proc.channel.close()
        await asyncio.to_thread(self._io.shutdown, wait=True)


def _with_gpu_use(
    on_result: Callable[[int, PoolResult], None], meter: GpuMeter | None, devices: Allocation
) -> Callable[[int, PoolResult], None]:
    """``on_result`` with the attempt's devices and measured GPU use added to each result."""

    def wrapped(i: int, result: PoolResult) -> None:
        usage = result.usage
        if meter is not None:
            meter.sample()  # the process holds its GPU memory until it ends: count it
            usage = meter.usage(usage)
        on_result(i, dataclasses.replace(result, usage=usage, devices=devices.ids))

    return wrapped
