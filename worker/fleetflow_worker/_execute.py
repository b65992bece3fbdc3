"""Execute leased attempts: ``async def`` tasks on the loop, plain ``def`` in the pool.

:class:`AttemptRunner` owns the :class:`~fleetflow_worker.state.AttemptTable`
and one asyncio task per attempt. Every attempt ends in exactly one of: an
Outcome handed to ``on_outcome``, or nothing (the coordinator cancelled it).
Each attempt logs one ``task_run_finished`` line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from fleetflow._task import Task
from fleetflow.api.v1 import common_pb2, worker_service_pb2

from fleetflow_worker._codec import (
    Payload,
    WireArg,
    bind_arguments,
    decode_args,
    encode_error,
    encode_result,
    to_outcome,
    wire_args,
)
from fleetflow_worker._pool import TaskProcessPool
from fleetflow_worker.errors import TaskNotRegistered, WorkerShutDown
from fleetflow_worker.state import AttemptKey, AttemptTable, CancelAction

__all__ = ["AttemptRunner"]

log = structlog.get_logger()

#: What an attempt produced: ``(payload, infrastructure)``, or None when cancelled.
_Result = tuple[Payload, bool] | None


class AttemptRunner:
    """Starts, cancels and aborts attempts, and reports what they produced.

    Args:
        worker_id: Bound into every log line of an attempt.
        tasks: ``{task_name: Task}`` this worker offers.
        pool: Runs plain ``def`` tasks.
        table: Bookkeeping of held attempts (shared with the heartbeat).
        on_outcome: Called once per attempt whose outcome must be reported.
        on_slot_freed: Called whenever an attempt stops running.
    """

    def __init__(
        self,
        worker_id: str,
        tasks: Mapping[str, Task],
        pool: TaskProcessPool,
        table: AttemptTable,
        on_outcome: Callable[[worker_service_pb2.Outcome], None],
        on_slot_freed: Callable[[], None] = lambda: None,
    ) -> None:
        self.worker_id = worker_id
        self.tasks = dict(tasks)
        self.pool = pool
        self.table = table
        self._on_outcome = on_outcome
        self._on_slot_freed = on_slot_freed
        #: {AttemptKey: asyncio task running the attempt}
        self._attempts: dict[AttemptKey, asyncio.Task[None]] = {}
        #: {AttemptKey: asyncio task of the user coroutine}, async tasks only.
        self._coroutines: dict[AttemptKey, asyncio.Task[Any]] = {}
        #: Set once the drain ended running attempts: their failures become this.
        self._shutdown: WorkerShutDown | None = None

    @property
    def attempts(self) -> list[asyncio.Task[None]]:
        """The asyncio tasks of every running attempt."""
        return list(self._attempts.values())

    def start(self, lease: worker_service_pb2.Lease) -> bool:
        """Start executing a lease; returns False for a duplicate of a held attempt."""
        key = AttemptKey(lease.task_run_id, lease.attempt)
        task = self.tasks.get(lease.task_name)
        if not self.table.start(key, is_async=task is not None and task.is_async):
            log.warning("duplicate_lease_ignored", task_run_id=key[0], attempt=key[1])
            return False
        self._attempts[key] = asyncio.create_task(
            self._run(key, lease, task), name=f"attempt-{key[0]}-{key[1]}"
        )
        return True

    def cancel(self, key: AttemptKey) -> CancelAction:
        """The coordinator took the lease back: stop or disown the attempt."""
        action = self.table.cancel(key)
        if action is CancelAction.CANCEL_TASK:
            coroutine = self._coroutines.get(key)
            if coroutine is not None:
                coroutine.cancel()
        return action

    def abort_all(self, reason: WorkerShutDown) -> None:
        """End every running attempt now (drain over); each reports ``reason``."""
        self._shutdown = reason
        for coroutine in list(self._coroutines.values()):
            coroutine.cancel()
        self.pool.kill()

    async def _run(
        self, key: AttemptKey, lease: worker_service_pb2.Lease, task: Task | None
    ) -> None:
        started = time.monotonic()
        result: _Result = None
        with structlog.contextvars.bound_contextvars(
            worker_id=self.worker_id,
            flow_run_id=lease.flow_run_id,
            task_run_id=key.task_run_id,
            attempt=key.attempt,
            task_name=lease.task_name,
        ):
            try:
                result = await self._execute(key, lease, task)
            finally:
                self._attempts.pop(key, None)
                report = self.table.finish(key, has_outcome=result is not None)
                self._on_slot_freed()
                if report and result is not None:
                    payload, infrastructure = result
                    self._on_outcome(to_outcome(*key, payload, infrastructure=infrastructure))
                _log_finished(result if report else None, time.monotonic() - started)

    async def _execute(
        self, key: AttemptKey, lease: worker_service_pb2.Lease, task: Task | None
    ) -> _Result:
        if self.table.is_cancelled(key):  # cancelled before this task got to run
            return None
        if task is None:
            return encode_error(TaskNotRegistered(lease.task_name)), True
        try:
            args = wire_args(lease)
        except ValueError as exc:
            return encode_error(exc), False
        if task.is_async:
            return await self._execute_async(key, task, args, lease)
        try:
            payload = await self.pool.run(
                task.name,
                args,
                lease.split_result,
                lease.timeout_seconds,
                skip=lambda: self.table.is_cancelled(key),
            )
        except Exception as exc:  # noqa: BLE001 - the process died, or the pool failed
            if self._shutdown is not None:
                return encode_error(self._shutdown), True
            return encode_error(exc), True
        return None if payload is None else (payload, False)

    async def _execute_async(
        self, key: AttemptKey, task: Task, args: list[WireArg], lease: worker_service_pb2.Lease
    ) -> _Result:
        try:
            call_args, call_kwargs = bind_arguments(task, decode_args(args))
            coro = task.fn(*call_args, **call_kwargs)
        except Exception as exc:  # noqa: BLE001 - bad arguments fail the attempt
            return encode_error(exc), False
        coroutine = asyncio.ensure_future(
            _guarded(coro, task.name, lease.split_result, lease.timeout_seconds)
        )
        self._coroutines[key] = coroutine
        try:
            return await coroutine, False
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this attempt itself is being cancelled: not ours to handle
            if self.table.is_cancelled(key):
                return None
            if self._shutdown is not None:
                return encode_error(self._shutdown), True
            return encode_error(exc), False  # task code cancelled itself
        finally:
            del self._coroutines[key]


async def _guarded(coro: Any, task_name: str, split_result: bool, timeout_s: float) -> Payload:
    """Await task code and encode how it ended; only CancelledError escapes."""
    timeout = asyncio.timeout(timeout_s if timeout_s > 0 else None)
    try:
        async with timeout:
            result = await coro
    except TimeoutError as exc:
        if not timeout.expired():
            return encode_error(exc)
        interrupted = exc.__context__ or exc  # the CancelledError holds the task's frames
        return encode_error(
            TimeoutError(
                f"task {task_name} exceeded its timeout of {timeout_s:g} s"
            ).with_traceback(interrupted.__traceback__)
        )
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails the task only
        return encode_error(exc)
    try:
        return encode_result(task_name, result, split_result)
    except Exception as exc:  # noqa: BLE001
        return encode_error(exc)


def _log_finished(result: _Result, duration_s: float) -> None:
    """The one canonical line per attempt."""
    duration_s = round(duration_s, 6)
    if result is None:
        log.info("task_run_finished", outcome="cancelled", duration_s=duration_s)
        return
    (kind, data), infrastructure = result
    if kind != "error":
        log.info("task_run_finished", outcome="completed", duration_s=duration_s)
        return
    error = common_pb2.TaskError.FromString(data)
    emit = log.warning if infrastructure else log.info
    emit(
        "task_run_finished",
        outcome="infrastructure_failed" if infrastructure else "failed",
        duration_s=duration_s,
        error_type=error.type,
        error=error.message,
    )
