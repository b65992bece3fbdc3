"""Execute leased attempts: ``async def`` tasks on the loop, plain ``def`` in task processes.

:class:`AttemptRunner` owns the :class:`~fleetflow_worker.state.AttemptTable` and one asyncio task
per attempt. Every attempt ends in exactly one of: an Outcome handed to ``on_outcome``, or nothing
(the coordinator cancelled it, or the drain handed it back). Cancelling an attempt cancels its
coroutine or kills its task process, and frees its slot at once. Each attempt logs one
``task_run_finished`` line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from fleetflow.api.v1 import worker_service_pb2
from fleetflow.errors import StoredObjectError
from fleetflow.execution import Task, start_tail

from fleetflow_worker._batch import BatchItem, PoolResult
from fleetflow_worker._codec import (
    StoreContext,
    WireArg,
    bind_arguments,
    decode_args,
    encode_error,
    encode_failure,
    encode_result,
    error_of,
    stored_refs,
    to_outcome,
    wire_args,
)
from fleetflow_worker._data import DataPlane, InputUnavailable
from fleetflow_worker._executors import Executor
from fleetflow_worker.errors import TaskNotRegistered, TaskTimeout
from fleetflow_worker.state import AttemptKey, AttemptTable, CancelAction, Reservation

__all__ = ["AttemptRunner", "memory_request", "gpu_request", "add_gpu_use"]

log = structlog.get_logger()

#: How an attempt ended, or None when it was cancelled (nothing to report).
_Result = PoolResult | None


def memory_request(lease: worker_service_pb2.Lease) -> float:
    """The lease's memory request in bytes; 0 (no limit) when the coordinator sent none."""
    if not lease.HasField("resources"):
        return 0.0
    return max(0.0, lease.resources.amounts.get("memory", 0.0))


def gpu_request(lease: worker_service_pb2.Lease) -> float:
    """The lease's ``gpu`` request (0: none)."""
    if not lease.HasField("resources"):
        return 0.0
    return max(0.0, lease.resources.amounts.get("gpu", 0.0))


def add_gpu_use(outcome: worker_service_pb2.Outcome, result: PoolResult) -> None:
    """Put the attempt's devices and measured GPU use on its outcome."""
    if not result.devices:
        return
    outcome.gpu_devices.extend(result.devices)
    outcome.peak_gpu_memory_bytes = result.usage.peak_gpu_memory_bytes
    if result.usage.gpu_utilization_percent is not None:
        outcome.gpu_utilization_percent = result.usage.gpu_utilization_percent


def custom_resources(lease: worker_service_pb2.Lease) -> dict[str, float]:
    """The lease's resources other than cpu and memory (a Dask executor asks its cluster)."""
    if not lease.HasField("resources"):
        return {}
    amounts = lease.resources.amounts
    return {name: amount for name, amount in amounts.items() if name not in ("cpu", "memory")}


class AttemptRunner:
    """Starts, cancels and aborts attempts, and reports what they produced.

    Args:
        worker_id: Bound into every log line of an attempt.
        tasks: ``{task_name: Task}`` this worker offers.
        pool: Runs plain ``def`` tasks: an executor (:mod:`fleetflow_worker._executors`).
        table: Bookkeeping of held attempts (shared with the heartbeat).
        on_outcome: Called once per attempt whose outcome must be reported.
        on_slot_freed: Called whenever an attempt stops running.
        data: The result store as this worker reaches it (None: everything inline).
    """

    def __init__(
        self,
        worker_id: str,
        tasks: Mapping[str, Task],
        pool: Executor,
        table: AttemptTable,
        on_outcome: Callable[[worker_service_pb2.Outcome], None],
        on_slot_freed: Callable[[], None] = lambda: None,
        data: DataPlane | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.data = data
        self.tasks = dict(tasks)
        self.pool = pool
        self.table = table
        self._on_outcome = on_outcome
        self._on_slot_freed = on_slot_freed
        #: {AttemptKey: asyncio task running the attempt}
        self._attempts: dict[AttemptKey, asyncio.Task[None]] = {}
        #: {AttemptKey: flow_run_id} of running attempts
        self._flow_run_ids: dict[AttemptKey, str] = {}
        #: {AttemptKey: asyncio task of the user coroutine}
        self._inner: dict[AttemptKey, asyncio.Future[PoolResult | None]] = {}
        #: {AttemptKey: a plain ``def`` attempt's own task while it awaits the executor}
        self._awaiting: dict[AttemptKey, asyncio.Task[Any]] = {}
        #: {AttemptKey: event set when a member of a running batch is cancelled}
        self._pokes: dict[AttemptKey, asyncio.Event] = {}

    @property
    def attempts(self) -> list[asyncio.Task[None]]:
        """The asyncio tasks of every running attempt."""
        return list(self._attempts.values())

    def start(
        self, lease: worker_service_pb2.Lease, reservation: Reservation | None = None
    ) -> bool:
        """Start executing a lease; returns False for a duplicate of a held attempt.

        Args:
            lease: The lease.
            reservation: The slots reserved for the request it answers.
        """
        key = AttemptKey(lease.task_run_id, lease.attempt)
        task = self.tasks.get(lease.task_name)
        is_async = task is not None and task.is_async
        if not self.table.start(key, is_async=is_async, reservation=reservation):
            log.warning(
                "duplicate_lease_ignored",
                flow_run_id=lease.flow_run_id,
                task_run_id=key[0],
                attempt=key[1],
            )
            return False
        self._attempts[key] = asyncio.create_task(
            self._run(key, lease, task), name=f"attempt-{key[0]}-{key[1]}"
        )
        self._flow_run_ids[key] = lease.flow_run_id
        return True

    def start_all(
        self,
        leases: Sequence[worker_service_pb2.Lease],
        reservation: Reservation | None = None,
    ) -> None:
        """Start every lease of one response; consecutive members of a batch share a slot.

        Args:
            leases: The response's leases.
            reservation: The slots reserved for the request (each single lease
                or batch uses one).
        """
        i, n = 0, len(leases)
        while i < n:
            batch = leases[i].batch
            j = i + 1
            if batch:
                while j < n and leases[j].batch == batch:
                    j += 1
            if j - i > 1:
                self.start_batch(leases[i:j], reservation)
            else:
                self.start(leases[i], reservation)
            i = j

    def start_batch(
        self,
        leases: Sequence[worker_service_pb2.Lease],
        reservation: Reservation | None = None,
    ) -> int:
        """Start a batch: its leases run one after another in one slot (of ``reservation``).

        Returns:
            How many leases started (duplicates of held attempts are ignored).
        """
        task = self.tasks.get(leases[0].task_name)
        keys = [AttemptKey(lease.task_run_id, lease.attempt) for lease in leases]
        is_async = task is not None and task.is_async
        fresh = self.table.start_batch(keys, is_async=is_async, reservation=reservation)
        if len(fresh) < len(keys):
            log.warning("duplicate_lease_ignored", count=len(keys) - len(fresh), batch=True)
        if not fresh:
            return 0
        by_key = dict(zip(keys, leases, strict=True))
        members = [(key, by_key[key]) for key in fresh]
        runner = asyncio.create_task(
            self._run_batch(members, task), name=f"batch-{fresh[0][0]}-{len(fresh)}"
        )
        for key, lease in members:
            self._attempts[key] = runner
            self._flow_run_ids[key] = lease.flow_run_id
        return len(fresh)

    def flow_run_id(self, key: AttemptKey) -> str | None:
        """The flow run of a running attempt, for log lines about it (None if unknown)."""
        return self._flow_run_ids.get(key)

    def cancel(self, key: AttemptKey) -> CancelAction:
        """The coordinator took the lease back: stop the attempt; it reports nothing.

        An ``async def`` attempt's coroutine is cancelled; a plain ``def``
        attempt's process is killed (or, still waiting for one, never starts).
        """
        action = self.table.cancel(key)
        if action is not CancelAction.NONE:
            inner = self._inner.get(key)
            if inner is not None:
                inner.cancel()
            awaiting = self._awaiting.pop(key, None)  # popped: the attempt knows it was us
            if awaiting is not None:
                awaiting.cancel()
            poke = self._pokes.get(key)
            if poke is not None:
                poke.set()
        return action

    def abort_all(self) -> list[AttemptKey]:
        """Stop every running attempt now (the drain is over); none reports an outcome.

        Returns:
            The attempts stopped, to hand back to the coordinator.
        """
        return [key for key in list(self._attempts) if self.cancel(key) is not CancelAction.NONE]

    async def _run(
        self, key: AttemptKey, lease: worker_service_pb2.Lease, task: Task | None
    ) -> None:
        started = time.monotonic()
        result: _Result = None
        ids = _attempt_ids(self.worker_id, key, lease)
        tokens = structlog.contextvars.bind_contextvars(**ids)
        try:
            result = await self._execute(key, lease, task, ids)
        finally:
            self._finish(key, result, time.monotonic() - started)
            structlog.contextvars.reset_contextvars(**tokens)

    def _finish(
        self,
        key: AttemptKey,
        result: _Result,
        duration_s: float,
        ids: Mapping[str, Any] | None = None,
        batched: list[AttemptKey] | None = None,
    ) -> None:
        """An attempt ended: free its slot (or its share), report and log it once.

        A batch member that completed is logged at debug level and added to
        ``batched``, for its batch's one info line (failures keep their own).
        """
        self._attempts.pop(key, None)
        self._flow_run_ids.pop(key, None)
        self._pokes.pop(key, None)
        report = self.table.finish(key, has_outcome=result is not None)
        self._on_slot_freed()
        if result is not None and result.duration_s > 0:
            duration_s = result.duration_s
        if report and result is not None:
            outcome = to_outcome(
                *key,
                result.payload,
                infrastructure=result.infrastructure,
                timed_out=result.timed_out,
                cpu_seconds=result.usage.cpu_seconds,
                peak_memory_bytes=result.usage.peak_memory_bytes,
                duration_seconds=duration_s,
            )
            add_gpu_use(outcome, result)
            self._on_outcome(outcome)
        if batched is not None and report and result is not None and result.payload[0] != "error":
            batched.append(key)
            log.debug(
                "task_run_finished", outcome="completed", duration_s=duration_s, **(ids or {})
            )
            return
        # Two loop iterations on: after the reporter sent the outcome (ids stay bound).
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, _log_finished, result if report else None, duration_s, ids)

    async def _run_batch(
        self,
        members: list[tuple[AttemptKey, worker_service_pb2.Lease]],
        task: Task | None,
    ) -> None:
        """Run a batch's members in order; plain ``def`` ones in one task process."""
        if task is None or task.is_async:
            for key, lease in members:  # one after another, each as a single attempt
                if key in self._attempts:
                    await self._run(key, lease, task)
            return
        head = members[0][1]
        poke = asyncio.Event()
        runnable, items, pinned = await self._prepare_batch(members, poke)
        completed: list[AttemptKey] = []
        started = time.monotonic()

        def on_result(i: int, result: PoolResult) -> None:
            key, ids = runnable[i]
            if key in self._attempts:
                self._finish(key, result, 0.0, ids, completed)

        try:
            await self.pool.run_batch(
                task.name,
                items,
                timeout_s=head.timeout_seconds,
                memory_request_bytes=memory_request(head),
                cancelled=lambda i: self.table.is_cancelled(runnable[i][0]),
                on_result=on_result,
                poke=poke,
                gpu=gpu_request(head),
                resources=custom_resources(head),
            )
        except Exception as exc:  # noqa: BLE001 - the pool failed (e.g. closed)
            failed = PoolResult(encode_error(exc), infrastructure=True)
            for key, ids in runnable:
                if key in self._attempts and not self.table.is_cancelled(key):
                    self._finish(key, failed, 0.0, ids)
        finally:
            if self.data is not None:
                self.data.release(pinned)
            for key, ids in runnable:  # cancelled members (or the batch itself was)
                if key in self._attempts:
                    self._finish(key, None, 0.0, ids)
            if completed:
                self._log_batch(head, completed, time.monotonic() - started)

    async def _prepare_batch(
        self,
        members: list[tuple[AttemptKey, worker_service_pb2.Lease]],
        poke: asyncio.Event,
    ) -> tuple[list[tuple[AttemptKey, dict[str, Any]]], list[BatchItem], list[str]]:
        """Decode each member's arguments and pin its stored inputs.

        A member with bad arguments, or stored inputs that cannot be read, ends here failed.

        Returns:
            The members that can run (key, log ids), their batch items (in the
            same order) and the pinned store keys to release afterwards.
        """
        runnable: list[tuple[AttemptKey, dict[str, Any]]] = []
        items: list[BatchItem] = []
        pinned: list[str] = []
        for key, lease in members:
            ids = _attempt_ids(self.worker_id, key, lease)
            try:
                args = wire_args(lease)
            except ValueError as exc:
                self._finish(key, PoolResult(encode_error(exc)), 0.0, ids)
                continue
            store = None
            if self.data is not None:
                store = self.data.context(lease)
                try:
                    args, keys = await self.data.prepare(args)
                except InputUnavailable as exc:
                    failed = PoolResult(encode_error(exc, infrastructure=True), infrastructure=True)
                    self._finish(key, failed, 0.0, ids)
                    continue
                pinned.extend(keys)
            self._pokes[key] = poke
            runnable.append((key, ids))
            items.append(BatchItem(args, lease.split_result, ids, store))
        return runnable, items, pinned

    def _log_batch(
        self, head: worker_service_pb2.Lease, completed: list[AttemptKey], duration_s: float
    ) -> None:
        """One line for a batch's completed members, each named by its (task_run_id, attempt).

        Failures were logged one by one.
        """
        log.info(
            "task_run_batch_finished",
            worker_id=self.worker_id,
            flow_run_id=head.flow_run_id,
            task_name=head.task_name,
            outcome="completed",
            count=len(completed),
            task_runs=[list(key) for key in completed],
            duration_s=round(duration_s, 6),
        )

    async def _execute(
        self,
        key: AttemptKey,
        lease: worker_service_pb2.Lease,
        task: Task | None,
        ids: Mapping[str, Any],
    ) -> _Result:
        if self.table.is_cancelled(key):  # cancelled before this task got to run
            return None
        if task is None:
            return PoolResult(encode_error(TaskNotRegistered(lease.task_name)), infrastructure=True)
        try:
            args = wire_args(lease)
        except ValueError as exc:
            return PoolResult(encode_error(exc))
        store = None
        pinned: list[str] = []
        if self.data is not None:
            store = self.data.context(lease)
            try:
                args, pinned = await self.data.prepare(args)
            except InputUnavailable as exc:
                return PoolResult(encode_error(exc, infrastructure=True), infrastructure=True)
            if self.table.is_cancelled(key):  # while its inputs were fetched (or waited for)
                self.data.release(pinned)
                return None
        try:
            if not task.is_async:
                return await self._in_process(key, task, args, lease, store, ids)
            return await self._start(key, lease, task, args, store)
        finally:
            if pinned:
                self.data.release(pinned)  # type: ignore[union-attr]

    async def _start(
        self,
        key: AttemptKey,
        lease: worker_service_pb2.Lease,
        task: Task,
        args: list[WireArg],
        store: StoreContext | None,
    ) -> _Result:
        """An ``async def`` attempt, its coroutine in a task of its own (a cancel cancels it)."""
        try:
            if stored_refs(args):  # reading stored inputs must not block the loop
                decoded = await asyncio.to_thread(decode_args, args, store)
            else:
                decoded = decode_args(args, store)
            call_args, call_kwargs = bind_arguments(task, decoded)
            coro = task.fn(*call_args, **call_kwargs)
        except StoredObjectError as exc:
            return PoolResult(encode_error(exc, infrastructure=True), infrastructure=True)
        except Exception as exc:  # noqa: BLE001 - bad arguments fail the attempt
            return PoolResult(encode_error(exc))
        inner = asyncio.ensure_future(self._async_attempt(coro, task, lease, store))
        self._inner[key] = inner
        try:
            return await inner
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this attempt itself is being cancelled: not ours to handle
            if self.table.is_cancelled(key):
                return None
            return PoolResult(encode_error(exc))  # task code cancelled itself
        except Exception as exc:  # noqa: BLE001 - the pool failed (e.g. closed)
            return PoolResult(encode_error(exc), infrastructure=True)
        finally:
            del self._inner[key]

    async def _async_attempt(
        self, coro: Any, task: Task, lease: worker_service_pb2.Lease, store: StoreContext | None
    ) -> PoolResult:
        """An ``async def`` attempt on the loop, holding its GPU devices (if any) meanwhile.

        It runs in the worker's own process, so its devices are not exported
        as ``CUDA_VISIBLE_DEVICES``; holding them keeps plain ``def`` attempts
        off them, and the outcome names them. Only the process executor
        assigns devices; with the others (thread, Dask) none are held.
        """
        gpu = gpu_request(lease)
        held = None
        hold_devices = getattr(self.pool, "hold_devices", None)
        if gpu > 0 and hold_devices is not None:
            try:
                held = await hold_devices(gpu)
            except BaseException:
                coro.close()  # never started
                raise
        try:
            result = await _guarded(coro, task, lease.split_result, lease.timeout_seconds, store)
        finally:
            if held is not None:
                self.pool.release_devices(held)
        return result if held is None else dataclasses.replace(result, devices=held.ids)

    async def _in_process(
        self,
        key: AttemptKey,
        task: Task,
        args: list[WireArg],
        lease: worker_service_pb2.Lease,
        store: StoreContext | None,
        ids: Mapping[str, Any],
    ) -> _Result:
        """A plain ``def`` attempt; :meth:`cancel` cancels its task while it waits here."""
        me = asyncio.current_task()
        assert me is not None
        self._awaiting[key] = me
        try:
            return await self.pool.run(
                task.name,
                args,
                lease.split_result,
                timeout_s=lease.timeout_seconds,
                memory_request_bytes=memory_request(lease),
                skip=lambda: self.table.is_cancelled(key),
                log_ids=ids,
                store=store,
                gpu=gpu_request(lease),
                resources=custom_resources(lease),
            )
        except asyncio.CancelledError:
            if key in self._awaiting or me.uncancel() > 0:
                raise  # not (only) the coordinator's cancel: not ours to handle
            return None
        except Exception as exc:  # noqa: BLE001 - the executor failed (e.g. closed)
            return PoolResult(encode_error(exc), infrastructure=True)
        finally:
            self._awaiting.pop(key, None)


async def _guarded(
    coro: Any, task: Task, split_result: bool, timeout_s: float, store: StoreContext | None = None
) -> PoolResult:
    """Await task code and encode how it ended; only CancelledError escapes."""
    task_name = task.name
    start_tail()  # this attempt's own context: a failure keeps its last log lines
    timeout = asyncio.timeout(timeout_s if timeout_s > 0 else None)
    try:
        async with timeout:
            result = await coro
    except TimeoutError as exc:
        if not timeout.expired():
            return PoolResult(encode_failure(exc, getattr(task, "retry_on", None)))
        interrupted = exc.__context__ or exc  # the CancelledError holds the task's frames
        error = TaskTimeout(task_name, timeout_s).with_traceback(interrupted.__traceback__)
        return PoolResult(encode_error(error), timed_out=True)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails the task only
        return PoolResult(encode_failure(exc, getattr(task, "retry_on", None)))
    try:
        if store is None:
            return PoolResult(encode_result(task_name, result, split_result))
        # Writing a large result to the store must not block the loop.
        return PoolResult(
            await asyncio.to_thread(encode_result, task_name, result, split_result, store)
        )
    except OSError as exc:  # the store refused the write: not the task's fault
        return PoolResult(encode_error(exc, infrastructure=True), infrastructure=True)
    except Exception as exc:  # noqa: BLE001
        return PoolResult(encode_error(exc))


def _attempt_ids(
    worker_id: str, key: AttemptKey, lease: worker_service_pb2.Lease
) -> dict[str, Any]:
    """The ids bound to every log line of one attempt."""
    return {
        "worker_id": worker_id,
        "flow_run_id": lease.flow_run_id,
        "task_run_id": key.task_run_id,
        "attempt": key.attempt,
        "task_name": lease.task_name,
    }


def _log_finished(result: _Result, duration_s: float, ids: Mapping[str, Any] | None = None) -> None:
    """The one canonical line per attempt (``ids`` when they are not bound already)."""
    fields: dict[str, Any] = {"duration_s": round(duration_s, 6), **(ids or {})}
    if result is None:
        log.info("task_run_finished", outcome="cancelled", **fields)
        return
    if result.usage.peak_memory_bytes:
        fields["cpu_s"] = round(result.usage.cpu_seconds, 3)
        fields["peak_memory_mib"] = round(result.usage.peak_memory_bytes / 2**20, 1)
    if result.devices:
        fields["gpus"] = ",".join(result.devices)
        fields["peak_gpu_memory_mib"] = round(result.usage.peak_gpu_memory_bytes / 2**20, 1)
        if result.usage.gpu_utilization_percent is not None:
            fields["gpu_util_percent"] = round(result.usage.gpu_utilization_percent, 1)
    if result.payload[0] != "error":
        log.info("task_run_finished", outcome="completed", **fields)
        return
    error = error_of(result.payload)
    if result.timed_out:
        outcome = "timed_out"
    else:
        outcome = "infrastructure_failed" if result.infrastructure else "failed"
    emit = log.warning if result.infrastructure else log.info
    emit("task_run_finished", outcome=outcome, error_type=error.type, error=error.message, **fields)
