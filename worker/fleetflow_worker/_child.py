"""The task-process side of plain ``def`` tasks.

Each task process (started by :class:`~fleetflow_worker._pool.TaskProcessPool`
from a forkserver) runs :func:`serve`: it imports the worker's user modules
once, says it is ready, then runs one attempt at a time as the pool sends
them down its pipe (:func:`run_task`). Arguments arrive pickled and the result
leaves pickled, so the worker's event loop never spends time in cloudpickle
for these tasks. Time and memory limits are enforced from outside, by killing
the process, so nothing here needs to cooperate. This module must not import
grpc: task processes never talk to the coordinator.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from fleetflow.errors import DuplicateTaskError, StoredObjectError
from fleetflow.execution import (
    Task,
    attempt_scope,
    collect_generator,
    find_tasks,
    live_tasks,
    where,
)
from fleetflow.loader import load_module

from fleetflow_worker._codec import (
    Payload,
    StoreContext,
    WireArg,
    bind_arguments,
    decode_args,
    encode_error,
    encode_failure,
    encode_result,
)
from fleetflow_worker.errors import TaskNotRegistered

__all__ = ["init_process", "load_tasks", "run_task", "run_batch", "serve", "ping"]

#: A batch sends what it has finished when a member ends and this long has
#: passed since its last send, seconds (and at its end): the pool sees
#: progress without a message per member.
BATCH_FLUSH_S = 0.002

#: Tasks of this task process, ``{task_name: Task}``; filled by :func:`init_process`.
_TASKS: dict[str, Task] = {}

#: Linux ``prctl`` option that delivers a signal when the parent exits.
_PR_SET_PDEATHSIG = 1


def load_tasks(module_specs: Sequence[str]) -> dict[str, Task]:
    """Import user modules and collect their tasks by registered name.

    Args:
        module_specs: Dotted module names or ``.py`` paths (see
            :func:`fleetflow.loader.load_module`).

    Returns:
        ``{task_name: Task}`` over all modules (a task that a module imports
        from another is the same task): the tasks each module's namespace
        holds, and every other task its import defined (in a class body, in a
        dict a factory filled), which would otherwise wait for a worker forever.

    Raises:
        FileNotFoundError: a path does not exist.
        ImportError: a module cannot be imported.
        fleetflow.DuplicateTaskError: two different definitions share a name
            (usually refused when the second is defined; this catches what a
            module reload let through).
    """
    tasks: dict[str, Task] = {}
    for spec in module_specs:
        before = {id(t) for t in live_tasks()}
        found_here = find_tasks(vars(load_module(spec)))
        # Tasks the import defined that no module-level name holds (in a class
        # body, made by a factory into a dict): the client can submit them too.
        for defined in live_tasks():
            if id(defined) not in before:
                found_here.setdefault(defined.name, defined)
        for name, found in found_here.items():
            old = tasks.get(name)
            if old is not None and old.fn is not found.fn and old.fingerprint != found.fingerprint:
                raise DuplicateTaskError(name, where(old.fn), where(found.fn), factory=False)
            tasks[name] = found
    return tasks


def init_process(module_specs: Sequence[str], nice: int = 0) -> None:
    """Prepare a task process: ignore SIGINT, lower its priority, load the user modules.

    Args:
        module_specs: The worker's ``--module`` values.
        nice: Added to the process's nice value (lower priority), so the
            worker's own loop (heartbeats) keeps running when every CPU is
            busy with tasks. 0 leaves the priority alone.

    Raises:
        ImportError: a module cannot be imported.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains the worker, not tasks
    if nice > 0:
        os.nice(nice)
    _TASKS.clear()
    _TASKS.update(load_tasks(module_specs))


def ping() -> int:
    """Return the number of tasks this process loaded."""
    return len(_TASKS)


def serve(
    conn: Connection,
    module_specs: Sequence[str],
    nice: int = 0,
    log_level: str | None = None,
    progress: Any = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Main function of a task process: run attempts sent down ``conn`` until EOF.

    Protocol (all messages pickled by ``Connection``):

    * child -> pool, once: ``("ready", {task name: fingerprint})`` or
      ``("failed", traceback_text)``;
    * pool -> child: ``(task_name, args, split_result, ids)`` runs one attempt
      and the child answers with its :data:`~fleetflow_worker._codec.Payload`;
    * pool -> child: ``("batch", [(task_name, args, split_result, ids), ...][, env])``
      runs the attempts one after another, after setting ``env`` (the
      attempt's ``CUDA_VISIBLE_DEVICES``) in ``os.environ``; the child answers with lists of
      ``(position, payload, cpu_seconds, duration_seconds, peak_rss_bytes)``
      (see :func:`run_batch`) until every position was answered;
      ``ids`` (the attempt's ``flow_run_id``, ``task_run_id``, ``attempt``,
      ``worker_id``, ``task_name``; may be left out) are bound to every log
      line of the attempt, and a failure keeps its last log lines;
      ``None`` asks the child to exit.

    Args:
        conn: This process's end of its pipe to the pool.
        module_specs: The worker's ``--module`` values.
        nice: See :func:`init_process`.
        log_level: Configure structlog like the worker (JSON lines on stderr
            unless it is a terminal) at this level; None leaves it alone.
        progress: Shared ``[position, started]`` (a ``RawArray("d", 2)``) where
            a batch records which member runs and since when
            (``time.monotonic()``), so the pool can time each member out.
        env: Set in ``os.environ`` before the modules are imported: a GPU
            worker's ``CUDA_VISIBLE_DEVICES`` for this process, which CUDA
            reads once, possibly already at import (``torch.cuda.is_available()``
            at module level).
    """
    if env:
        os.environ.update(env)
    _die_with_parent()
    if log_level:
        from fleetflow_worker.logs import configure_logging

        configure_logging(log_level)
    try:
        init_process(module_specs, nice)
    except BaseException:  # noqa: BLE001 - report any import failure, then exit
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", {name: task.fingerprint for name, task in _TASKS.items()}))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the worker is gone
        if request is None:
            return
        if request[0] == "batch":
            if len(request) > 2:
                os.environ.update(request[2])  # CUDA_VISIBLE_DEVICES: read by CUDA at its init
            if not run_batch(conn, request[1], progress):
                return
            continue
        task_name, args, split_result, *rest = request
        _reset_peak_memory()
        with attempt_scope(rest[0] if rest else {}):
            payload = run_task(
                task_name, args, split_result, store=rest[1] if len(rest) > 1 else None
            )
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            conn.send(payload)
        except (BrokenPipeError, OSError):
            return


#: The last chunk of a stored list this process decoded (batch members walk a map in order).
_CHUNK_CACHE: dict[object, object] = {}


def run_task(
    task_name: str,
    args: Sequence[WireArg],
    split_result: bool,
    tasks: dict[str, Task] | None = None,
    store: StoreContext | None = None,
) -> Payload:
    """Run one attempt of a plain ``def`` task; never raises for task failures.

    Args:
        task_name: Registered task name.
        args: ``[(name, value)]`` as leased: pickles, or where to read them.
        split_result: Return the result item by item (a downstream map needs it).
        tasks: Registry to look the task up in; defaults to this process's.
        store: Where stored inputs are read and large results written; None
            keeps everything inline.

    Returns:
        A payload (see :mod:`fleetflow_worker._codec`): the result (pickled,
        or its reference in the store), or the captured exception. An input
        missing from or damaged in the store is an infrastructure failure.
    """
    task = (_TASKS if tasks is None else tasks).get(task_name)
    if task is None:
        return encode_error(TaskNotRegistered(task_name, "task process"))
    try:
        call_args, call_kwargs = bind_arguments(task, decode_args(args, store, _CHUNK_CACHE))
    except StoredObjectError as exc:  # not the task's fault: another attempt may succeed
        return encode_error(exc, infrastructure=True)
    except BaseException as exc:  # noqa: BLE001 - bad arguments fail the attempt
        return encode_error(exc)
    try:
        result = collect_generator(task.fn(*call_args, **call_kwargs))
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails the task only
        return encode_failure(exc, getattr(task, "retry_on", None))
    try:
        return encode_result(task_name, result, split_result, store)
    except OSError as exc:  # the store refused the write: not the task's fault
        return encode_error(exc, infrastructure=True)
    except Exception as exc:  # noqa: BLE001 - an unpicklable or unsplittable result
        return encode_error(exc)


def run_batch(conn: Connection, requests: Sequence[tuple], progress: Any = None) -> bool:
    """Run a batch's attempts in order, sending results as they finish.

    Results are sent in lists: when a member ends and :data:`BATCH_FLUSH_S`
    seconds have passed since the last list, and when the last member ends
    (so a finished member's result may wait behind a long next member). Each result is ``(position,
    payload, cpu_seconds, duration_seconds, peak_rss_bytes)``: CPU and wall
    time of that attempt alone, seconds, and this process's peak resident
    memory since the batch began (an upper bound for the attempt), bytes.

    Args:
        conn: This process's end of its pipe to the pool.
        requests: ``[(task_name, args, split_result, ids)]`` as for one attempt.
        progress: See :func:`serve`; None: not shared.

    Returns:
        False when the pool is gone (the pipe broke).
    """
    _reset_peak_memory()
    done: list[tuple] = []
    clock, cpu_clock = time.perf_counter, time.process_time
    flushed = clock()
    last = len(requests) - 1
    for position, (task_name, args, split_result, ids, *more) in enumerate(requests):
        if progress is not None:
            progress[1] = time.monotonic()
            progress[0] = position
        started, cpu_started = clock(), cpu_clock()
        with attempt_scope(ids):
            payload = run_task(task_name, args, split_result, store=more[0] if more else None)
        ended = clock()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        done.append((position, payload, cpu_clock() - cpu_started, ended - started, peak))
        if position == last or ended - flushed >= BATCH_FLUSH_S:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                conn.send(done)
            except (BrokenPipeError, OSError):
                return False
            done = []
            flushed = ended
    return True


#: This process's ``/proc/self/clear_refs``, open for writing (-1: not available).
_clear_refs: int | None = None


def _reset_peak_memory() -> None:
    """Reset this process's peak RSS (``VmHWM``) so it measures one attempt (Linux >= 4.0).

    The file stays open: each write resets the peak again, without an open
    and a close per attempt.
    """
    global _clear_refs
    if _clear_refs is None:
        try:
            _clear_refs = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            _clear_refs = -1  # elsewhere the pool's sampling gives the peak
    if _clear_refs >= 0:
        try:
            os.write(_clear_refs, b"5")
        except OSError:
            pass


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the forkserver) exits.

    The forkserver exits with the worker, so a task process never outlives a
    worker that was killed outright. Best effort; a no-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
