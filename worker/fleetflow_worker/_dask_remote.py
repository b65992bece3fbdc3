"""What runs inside a Dask worker for :class:`~fleetflow_worker._dask.DaskExecutor`.

The executor submits :func:`run_members` (by reference: fleetflow must be
installed on the Dask workers, and the worker's ``--module`` values must be
importable there, at the same path or under the same module name). It loads
the user modules once per Dask worker process, then runs a batch's members in
order in the Dask worker's thread, exactly as a task process does
(:func:`fleetflow_worker._child.run_task`): arguments and results travel as
the same pickles and store references, so outcomes are built as for the
process executor. Task failures are encoded in the payload, never raised, so
an exception of the Dask future itself always means infrastructure (a Dask
worker died, the future was cancelled or lost).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from fleetflow.execution import Task, attempt_scope

from fleetflow_worker._child import load_tasks, run_task

__all__ = ["load", "run_members"]

#: ``{module specs: {task_name: Task}}`` loaded in this Dask worker process.
_LOADED: dict[tuple[str, ...], dict[str, Task]] = {}
_LOCK = threading.Lock()


def load(module_specs: Sequence[str]) -> int:
    """Import the user modules here (once per process); returns the number of tasks.

    Raises:
        ImportError: a module cannot be imported on this Dask worker.
    """
    key = tuple(module_specs)
    with _LOCK:
        tasks = _LOADED.get(key)
        if tasks is None:
            tasks = _LOADED[key] = load_tasks(key)
    return len(tasks)


def run_members(module_specs: Sequence[str], requests: Sequence[tuple]) -> list[tuple[Any, ...]]:
    """Run a batch's members one after another in this Dask worker's thread.

    Args:
        module_specs: The fleetflow worker's ``--module`` values.
        requests: ``[(task_name, args, split_result, ids, store)]`` as for a
            task process (:func:`fleetflow_worker._child.run_batch`).

    Returns:
        ``[(payload, cpu_seconds, duration_seconds)]``, one per member, in order.
    """
    load(module_specs)
    tasks = _LOADED[tuple(module_specs)]
    out = []
    for task_name, args, split_result, ids, store in requests:
        started, cpu_started = time.perf_counter(), time.thread_time()
        with attempt_scope(ids):
            payload = run_task(task_name, args, split_result, tasks, store)
        out.append((payload, time.thread_time() - cpu_started, time.perf_counter() - started))
    return out
