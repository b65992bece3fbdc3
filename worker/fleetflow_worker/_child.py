"""The pool-process side of plain ``def`` tasks.

Each pool process imports the worker's user modules once (:func:`init_process`)
and then runs attempts by task name (:func:`run_task`). Arguments arrive
pickled and the result leaves pickled, so the worker's event loop never spends
time in cloudpickle for these tasks. This module must not import grpc: pool
processes start from a forkserver and never talk to the coordinator.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType

from fleetflow._task import Task, find_tasks
from fleetflow.loader import load_module

from fleetflow_worker._codec import (
    Payload,
    WireArg,
    bind_arguments,
    decode_args,
    encode_error,
    encode_result,
)
from fleetflow_worker.errors import TaskNotRegistered

__all__ = ["init_process", "load_tasks", "run_task", "ping"]

#: Tasks of this pool process, ``{task_name: Task}``; filled by :func:`init_process`.
_TASKS: dict[str, Task] = {}


def load_tasks(module_specs: Sequence[str]) -> dict[str, Task]:
    """Import user modules and collect their tasks by registered name.

    Args:
        module_specs: Dotted module names or ``.py`` paths (see
            :func:`fleetflow.loader.load_module`).

    Returns:
        ``{task_name: Task}`` over all modules; a later module wins a name clash.

    Raises:
        FileNotFoundError: a path does not exist.
        ImportError: a module cannot be imported.
    """
    tasks: dict[str, Task] = {}
    for spec in module_specs:
        tasks.update(find_tasks(vars(load_module(spec))))
    return tasks


def init_process(module_specs: Sequence[str]) -> None:
    """Pool initializer: ignore Ctrl-C (the worker drains) and load the user modules.

    Raises:
        ImportError: a module cannot be imported (the pool then reports broken).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _TASKS.clear()
    _TASKS.update(load_tasks(module_specs))


def ping() -> int:
    """Return the number of tasks this process loaded (the pool warm-up call)."""
    return len(_TASKS)


class _Timeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so task code rarely swallows it."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Timeout


def run_task(
    task_name: str,
    args: Sequence[WireArg],
    split_result: bool,
    timeout_s: float = 0.0,
    tasks: dict[str, Task] | None = None,
) -> Payload:
    """Run one attempt of a plain ``def`` task; never raises for task failures.

    Args:
        task_name: Registered task name.
        args: ``[(name, pickled or [pickled, ...])]`` as leased.
        split_result: Return the result item by item (a downstream map needs it).
        timeout_s: Soft time limit in seconds (0: none). Enforced with SIGALRM,
            so it interrupts Python code but not a long call inside a C
            extension; the task then fails with ``TimeoutError``.
        tasks: Registry to look the task up in; defaults to this process's.

    Returns:
        A payload (see :mod:`fleetflow_worker._codec`): the pickled result or
        items, or the captured exception.
    """
    task = (_TASKS if tasks is None else tasks).get(task_name)
    if task is None:
        return encode_error(TaskNotRegistered(task_name, "task process"))
    try:
        call_args, call_kwargs = bind_arguments(task, decode_args(args))
        try:
            with _Alarm(timeout_s):
                result = task.fn(*call_args, **call_kwargs)
        except _Timeout as timeout:
            # Keep the traceback of the interrupted frames: it shows where the task was.
            raise TimeoutError(
                f"task {task_name} exceeded its timeout of {timeout_s:g} s"
            ).with_traceback(timeout.__traceback__) from None
        return encode_result(task_name, result, split_result)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails the task only
        return encode_error(exc)


class _Alarm:
    """Arm SIGALRM for ``timeout_s`` seconds around a block (main thread only)."""

    def __init__(self, timeout_s: float) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.timeout_s = timeout_s if main else 0.0
        self.previous: object = None

    def __enter__(self) -> None:
        if self.timeout_s > 0:
            self.previous = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)

    def __exit__(self, *exc: object) -> None:
        if self.timeout_s > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)  # type: ignore[arg-type]
