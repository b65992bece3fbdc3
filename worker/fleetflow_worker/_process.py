"""One task process: start it, send it attempts over its pipe, kill it, reap it.

Used by :mod:`fleetflow_worker._pool`, which decides when; the process side is
:func:`fleetflow_worker._child.serve`.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Iterable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from fleetflow_worker import _child
from fleetflow_worker._channel import LoopChannel

__all__ = ["PoolStartError", "TaskProcess", "live_pids"]


class PoolStartError(RuntimeError):
    """A task process could not start (usually: a --module fails to import there)."""


#: Serializes what reads a forkserver child's exit status: ``start()`` (it
#: polls every earlier child), ``is_alive()``, ``join()`` and ``exitcode``.
#: Two threads reading one status pipe at once make one of them see 255.
_STATUS_LOCK = threading.Lock()


class TaskProcess:
    """One live task process and the pool's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection, progress: Any = None) -> None:
        self.process = process
        self.conn = conn
        #: The same pipe for the event loop: batches are sent and answered
        #: through it (:class:`~fleetflow_worker._batch.BatchPass`).
        self.channel = LoopChannel(conn)
        self.ps = psutil.Process(process.pid)
        #: Shared ``[position, started]`` of the batch member running now
        #: (see :func:`fleetflow_worker._child.run_batch`); None if not shared.
        self.progress = progress

    def current(self) -> tuple[int, float]:
        """The running batch member: ``(position, monotonic start time)``; (-1, 0) if none."""
        if self.progress is None:
            return -1, 0.0
        position, started = self.progress[0], self.progress[1]
        return int(position), started

    def reset_progress(self) -> None:
        """Mark that no batch member has started yet (before a batch is sent)."""
        if self.progress is not None:
            self.progress[0] = -1.0
            self.progress[1] = 0.0

    @classmethod
    def start(
        cls,
        ctx: BaseContext,
        module_specs: Sequence[str],
        nice: int,
        timeout_s: float,
        registry: set[BaseProcess],
        log_level: str | None = None,
        fingerprints: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> TaskProcess:
        """Start one task process and wait until it imported the modules (blocking).

        Args:
            ctx: multiprocessing context (forkserver or spawn).
            module_specs: The worker's ``--module`` values.
            nice: Niceness added to the process.
            timeout_s: Longest the imports may take, seconds.
            registry: Receives the process as soon as it exists (so a
                concurrent kill reaches it) and loses it if it fails.
            log_level: The process configures structlog at this level (None: not).
            fingerprints: ``{task name: fingerprint}`` the worker registered
                with; a process that imported other code (the file was
                edited since the worker started) is refused, so a task never
                runs code other than the version its node was leased for.
            env: Set in the process's environment before it imports the
                modules (a GPU worker's ``CUDA_VISIBLE_DEVICES``).

        Raises:
            PoolStartError: it failed to import them, exited or took too long.
        """
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        progress = ctx.RawArray("d", 2)  # type: ignore[attr-defined]
        progress[0] = -1.0
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_child.serve,
            args=(child_conn, list(module_specs), nice, log_level, progress, env),
            name="fleetflow-task",
        )
        with _STATUS_LOCK:
            process.start()
        registry.add(process)
        child_conn.close()  # the child's copy is its only one: its death means EOF here
        try:
            if not parent_conn.poll(timeout_s):
                raise PoolStartError(f"no answer within {timeout_s:g} s")
            status, detail = parent_conn.recv()
            if status != "ready":
                raise PoolStartError(f"a --module failed to import:\n{detail}")
            _check_versions(fingerprints or {}, detail)
            return cls(process, parent_conn, progress)
        except (EOFError, OSError, PoolStartError) as exc:
            process.kill()
            exitcode = _reap(process, 5.0, parent_conn)
            registry.discard(process)
            if isinstance(exc, PoolStartError):
                raise
            raise PoolStartError(
                f"the task process exited while starting (exit code {exitcode})"
            ) from exc

    def alive(self) -> bool:
        """Whether the process still runs."""
        if not _readable(self.process):
            return True  # its status pipe says nothing yet: no exit status to read
        with _STATUS_LOCK:
            return self.process.is_alive()

    def kill(self) -> None:
        """SIGKILL the process and the processes it started (no-op if it already exited).

        Its children go too: once killed its attempt's devices and memory go
        to the next attempt, and a data loader or helper process it left
        behind would still be using them. They are listed before the kill
        (after it they belong to init and cannot be found).
        """
        try:
            children = self.ps.children(recursive=True)
        except psutil.Error:
            children = []
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil checks the pid is still that process first

    def reap(self, timeout_s: float) -> int | None:
        """Wait for the process to exit (blocking) and close the pipe; returns its exit code."""
        return _reap(self.process, timeout_s, self.conn)


def _reap(process: BaseProcess, timeout_s: float, conn: Connection | None = None) -> int | None:
    wait([process.sentinel], timeout_s)  # select only: the status is read under the lock
    with _STATUS_LOCK:
        process.join(0)
        exitcode = process.exitcode
    if conn is not None:
        conn.close()
    return exitcode


def _readable(process: BaseProcess) -> bool:
    """Whether the process's sentinel can be read (it exited), without waiting or locking.

    Only a poll of the descriptor: the status itself is read under the lock.
    """
    try:
        poller = select.poll()
        poller.register(process.sentinel, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True  # closed or never started: the caller's locked check decides


def live_pids(processes: Iterable[BaseProcess]) -> list[int]:
    """Process ids of those of ``processes`` that still run."""
    with _STATUS_LOCK:
        return [p.pid for p in list(processes) if p.pid and p.is_alive()]


def _check_versions(expected: Mapping[str, str], loaded: object) -> None:
    """Refuse a task process whose tasks are not the code the worker registered."""
    if not isinstance(loaded, dict):
        return
    for name, version in sorted(expected.items()):
        now = loaded.get(name)
        if now is not None and now != version:
            raise PoolStartError(
                f"the code of task {name!r} changed on disk since this worker started "
                f"(fingerprint {version}, now {now}); restart the worker to run the new version"
            )
