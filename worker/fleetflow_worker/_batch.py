"""One pass of a batch over one task process: send it, watch it, stop it, blame one member.

:class:`~fleetflow_worker._pool.TaskProcessPool` runs a batch (a single attempt
is a batch of one) in a seat's process. A :class:`BatchPass` sends the members
left to run down the process's pipe in one message, then samples the process
every ``sample_interval_s`` until every member answered or a member must be
stopped:

* it was cancelled (the caller's ``poke`` wakes the watch at once);
* the process grew past the memory limit;
* the member running now ran past ``timeout_s``.

Then the pool's ``replace`` kills the process (and starts the seat's next one),
and the member running when the kill was decided is blamed: it gets a
timeout, memory-limit or process-death result (a cancelled one gets none).
If its result arrived first after all, nobody is blamed. The pass returns the
members still to run, which the pool sends to the seat's new process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from fleetflow_worker._codec import Payload, StoreContext, WireArg, encode_error
from fleetflow_worker._gpu_usage import GpuMeter
from fleetflow_worker._process import TaskProcess
from fleetflow_worker._usage import AttemptUsage, ProcessMeter
from fleetflow_worker.errors import MemoryLimitExceeded, TaskProcessDied, TaskTimeout

__all__ = ["BatchItem", "BatchLimits", "BatchPass", "PoolResult", "retrieve"]

log = structlog.get_logger()

#: Why a batch's process was stopped: the member running then was cancelled.
_CANCELLED = "cancelled"

#: Why a pass stopped its process: an error to report for the member, or _CANCELLED.
_StopReason = BaseException | str


@dataclass(frozen=True, slots=True)
class PoolResult:
    """How one attempt in a task process ended.

    Attributes:
        payload: The result, or the failure (the task's own exception, or the
            timeout, memory-limit or process-death error).
        usage: CPU time and peak memory of the attempt.
        timed_out: The attempt ran past its timeout and was killed.
        infrastructure: The failure is not the task code's doing (its process
            died or could not start).
    """

    payload: Payload
    usage: AttemptUsage = field(default_factory=AttemptUsage)
    timed_out: bool = False
    infrastructure: bool = False
    #: Wall time of the task code, seconds (0: not measured).
    duration_s: float = 0.0
    #: The GPU devices the attempt held, as in its ``CUDA_VISIBLE_DEVICES``.
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One member of a batch for :meth:`~fleetflow_worker._pool.TaskProcessPool.run_batch`.

    Attributes:
        args: Pickled arguments as leased.
        split_result: Return the result item by item.
        log_ids: Bound to every log line of the attempt in its process.
        store: Where stored inputs are read and large results written (None:
            everything inline).
    """

    args: Sequence[WireArg]
    split_result: bool
    log_ids: Mapping[str, Any]
    store: StoreContext | None = None


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What a pass enforces on each member.

    Attributes:
        timeout_s: Each member's hard time limit, seconds (0: none).
        memory_request_bytes: The task's memory request, bytes (0: none).
        memory_limit_bytes: RSS above which the process is killed, bytes (0: none).
        sample_interval_s: How often the process is sampled, seconds.
    """

    timeout_s: float
    memory_request_bytes: float
    memory_limit_bytes: float
    sample_interval_s: float


class BatchPass:
    """Runs the members ``todo`` of a batch in one task process (see the module docstring).

    Args:
        proc: The seat's live process.
        task_name: Registered task name (the same for every member).
        items: Every member of the batch.
        todo: Indexes into ``items`` of the members to run now, in order.
        limits: Time and memory limits.
        cancelled: ``cancelled(i)`` says member ``i`` no longer needs to run.
        on_result: Called with ``(i, result)`` for each member that ended, on the loop.
        gpu: Samples the process's GPU use with every sample (None: no GPU attempt).
    """

    def __init__(
        self,
        proc: TaskProcess,
        task_name: str,
        items: Sequence[BatchItem],
        todo: list[int],
        limits: BatchLimits,
        cancelled: Callable[[int], bool],
        on_result: Callable[[int, PoolResult], None],
        *,
        gpu: GpuMeter | None = None,
    ) -> None:
        self.proc = proc
        self.gpu = gpu
        if gpu is not None:
            gpu.attach(proc.ps)
        self.task_name = task_name
        self.items = items
        self.todo = todo
        self.limits = limits
        self.cancelled = cancelled
        self.on_result = on_result
        #: [answered] per position in ``todo``
        self.answered = [False] * len(todo)
        #: Made at the first sample: short batches need none.
        self.meter: ProcessMeter | None = None
        #: The member a kill is for (its position in ``todo``, and since when it
        #: runs), read when the kill is decided: the child may start the next
        #: member before the SIGKILL lands.
        self.decided, self.decided_started = -1, 0.0
        #: What the watch awaits between samples; resolved by the pipe's
        #: callbacks directly (no extra loop iteration), a poke or the timer.
        self._wake: asyncio.Future[None] | None = None

    async def run(
        self,
        replace: Callable[[], asyncio.Future[int | None]],
        poke: asyncio.Event | None = None,
        env: Mapping[str, str] | None = None,
    ) -> list[int]:
        """Send, watch and, if need be, stop; returns the members left to run.

        Args:
            replace: Kills the seat's process and starts its next one; its
                future gives the old process's exit code.
            poke: Set by the caller when it cancels a member.
            env: Set in the process's environment before the members run
                (``CUDA_VISIBLE_DEVICES``); None: left alone.
        """
        call = self._send(env)
        try:
            try:
                reason = await self._watch(call, poke)
            except BaseException:
                # Cancelled, or watching itself failed: either way the process may
                # still be running a member, so it must not go back to the seat.
                replace()
                raise
            if reason is None and call.exception() is None:
                return []  # every member answered
            exitcode = await self._stop(call, reason, replace)
        finally:
            if not call.done():  # nothing more is read for this pass
                self.proc.channel.stop()
                call.cancel()
        current = self._blame(reason, exitcode)
        return [i for q, i in enumerate(self.todo) if not self.answered[q] and q != current]

    def _send(self, env: Mapping[str, str] | None) -> asyncio.Future[None]:
        """Send the members down the pipe and read their results on the loop.

        Returns:
            A future done once every member answered, or with the error that
            ended the pipe (EOFError: the process exited or was killed).
        """
        call: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        requests = [
            (
                self.task_name,
                list(self.items[i].args),
                self.items[i].split_result,
                dict(self.items[i].log_ids),
                self.items[i].store,
            )
            for i in self.todo
        ]
        message = ("batch", requests) if env is None else ("batch", requests, dict(env))
        channel = self.proc.channel
        left = len(requests)

        def on_message(results: list[tuple]) -> None:
            nonlocal left
            left -= len(results)
            if left <= 0:
                channel.stop()
            self._on_results(results)
            if left <= 0:
                self._end(call)

        def on_end(exc: BaseException) -> None:
            self._end(call, exc)

        def sent(writing: asyncio.Future[None]) -> None:
            exc = None if writing.cancelled() else writing.exception()
            if exc is not None and not call.done():
                channel.stop()
                self._end(call, exc)

        self.proc.reset_progress()
        try:
            channel.listen(on_message, on_end)
            writing = channel.send(message)
        except OSError as exc:  # the process is gone: the pass sees it like a death
            channel.stop()
            self._end(call, exc)
            return call
        if writing is not None:  # a big batch: the loop writes the rest as the pipe drains
            writing.add_done_callback(sent)
        return call

    def _end(self, call: asyncio.Future[None], exc: BaseException | None = None) -> None:
        """The pipe's part of the pass is over: every member answered, or ``exc`` ended it."""
        if call.done():
            return
        if exc is None:
            call.set_result(None)
        else:
            call.set_exception(exc)
            call.exception()  # seen: the watch reads it, or the pass is being stopped anyway
        self._rouse()

    def _rouse(self, _: object = None) -> None:
        """Wake the watch now (the call ended, or a poke)."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _sleep(self, seconds: float) -> None:
        """Until the next sample is due, or :meth:`_rouse`, whichever comes first."""
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        timer = loop.call_later(seconds, self._rouse)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _on_results(self, results: list[tuple]) -> None:
        """Results from the process, on the loop, in arrival order."""
        for position, payload, cpu_s, duration_s, peak in results:
            self.answered[position] = True
            i = self.todo[position]
            if not self.cancelled(i):
                usage = AttemptUsage(cpu_s, peak)
                self.on_result(i, PoolResult(payload, usage, duration_s=duration_s))

    def _running(self, position: int) -> bool:
        return 0 <= position < len(self.todo) and not self.answered[position]

    async def _watch(
        self, call: asyncio.Future[None], poke: asyncio.Event | None
    ) -> _StopReason | None:
        """Sample until every member answered (None) or one must be stopped (why)."""
        poked = self._poked(poke)
        try:
            while not call.done():
                wait_s = self._wait_s()
                if wait_s > 0 and (poked is None or not poked.done()):
                    await self._sleep(wait_s)
                if call.done():
                    break
                if poked is not None and poked.done():
                    poke.clear()  # type: ignore[union-attr]
                    poked = self._poked(poke)
                reason = self._check()
                if reason is not None:
                    return reason
            return None
        finally:
            if poked is not None:
                poked.cancel()

    def _poked(self, poke: asyncio.Event | None) -> asyncio.Future[Any] | None:
        """A future of ``poke`` being set, which wakes the watch (None: no poke)."""
        if poke is None:
            return None
        poked = asyncio.ensure_future(poke.wait())
        poked.add_done_callback(self._rouse)
        return poked

    def _wait_s(self) -> float:
        """Until the next sample, or the running member's deadline if sooner."""
        wait_s = self.limits.sample_interval_s
        position, started = self.proc.current()
        if self.limits.timeout_s > 0 and self._running(position):
            wait_s = min(wait_s, started + self.limits.timeout_s - time.monotonic())
        return wait_s

    def _check(self) -> _StopReason | None:
        """One sample: whether the running member must be stopped, and why."""
        position, started = self.proc.current()
        running = self._running(position)
        self.decided, self.decided_started = position, started
        if running and self.cancelled(self.todo[position]):
            return _CANCELLED
        if self.meter is None:
            self.meter = ProcessMeter(self.proc.ps)
        rss = self.meter.sample()
        if self.gpu is not None:
            self.gpu.sample()
        limit = self.limits.memory_limit_bytes
        if limit and rss > limit:
            return MemoryLimitExceeded(self.task_name, self.limits.memory_request_bytes, rss, limit)
        timeout_s = self.limits.timeout_s
        if running and timeout_s > 0 and time.monotonic() >= started + timeout_s:
            return TaskTimeout(self.task_name, timeout_s)
        return None

    async def _stop(
        self,
        call: asyncio.Future[None],
        reason: _StopReason | None,
        replace: Callable[[], asyncio.Future[int | None]],
    ) -> int | None:
        """Kill the process for ``reason`` (None: it died on its own); its exit code if it died."""
        if self.meter is None:
            self.meter = ProcessMeter(self.proc.ps)
        pid = self.proc.process.pid
        if reason is None:
            exitcode = await replace()
            log.warning("task_process_died", exitcode=exitcode, pid=pid)
            self.decided, self.decided_started = self.proc.current()  # running at its death
            return exitcode
        self.meter.sample(high_water_mark=True)
        if isinstance(reason, MemoryLimitExceeded):
            reason.peak_bytes = max(reason.peak_bytes, self.meter.rss_peak)
        replace()
        await asyncio.wait([call], timeout=5.0)  # results read before the EOF came first
        why = reason if isinstance(reason, str) else type(reason).__name__
        log.info("task_process_killed", reason=why, pid=pid)
        return None

    def _blame(self, reason: _StopReason | None, exitcode: int | None) -> int:
        """Report the stopped member's result; returns its position (-1: nobody).

        The member running when the kill was decided is blamed, unless its
        result arrived after all (then the kill only cost the next one its
        start: it runs again). Before any member started, the first
        unanswered one is blamed.
        """
        n = len(self.todo)
        position = max(0, self.decided)
        if position < n and self.answered[position] and self.decided < 0:
            position = next((q for q in range(n) if not self.answered[q]), n)
        current = position if position < n and not self.answered[position] else -1
        if current >= 0 and not self.cancelled(self.todo[current]):
            result = self._stopped_result(reason, exitcode)
            if result is not None:
                self.on_result(self.todo[current], result)
        return current

    def _stopped_result(
        self, reason: _StopReason | None, exitcode: int | None
    ) -> PoolResult | None:
        """The blamed member's result (None for a cancelled one: it reports nothing)."""
        if isinstance(reason, str):
            return None
        usage = self.meter.usage() if self.meter is not None else AttemptUsage()
        # Its wall time so far, so a node whose members hang gets smaller batches.
        started = self.decided_started
        ran_s = max(0.0, time.monotonic() - started) if started else 0.0
        if reason is None:
            died = encode_error(TaskProcessDied(exitcode))
            return PoolResult(died, usage, infrastructure=True, duration_s=ran_s)
        timed_out = isinstance(reason, TaskTimeout)
        return PoolResult(encode_error(reason), usage, timed_out=timed_out, duration_s=ran_s)


def retrieve(future: asyncio.Future) -> None:  # type: ignore[type-arg]
    """Mark a background future's exception as seen (it is handled elsewhere or moot)."""
    if not future.cancelled():
        future.exception()
