"""Failures the worker reports on behalf of task code it could not run to the end.

They travel to the client inside ``TaskError`` (pickled), so each one keeps
its constructor arguments in ``args`` and unpickles wherever
``fleetflow_worker`` is importable.
"""

from __future__ import annotations

import signal

from fleetflow.errors import FleetflowError

__all__ = [
    "WorkerError",
    "TaskNotRegistered",
    "TaskProcessDied",
    "DaskWorkerLost",
    "TaskTimeout",
    "MemoryLimitExceeded",
    "WorkerShutDown",
    "OutcomeTooLarge",
]


class WorkerError(FleetflowError):
    """Root of the errors a fleetflow worker raises or reports."""


class TaskNotRegistered(WorkerError, LookupError):
    """The coordinator leased a task this worker (or its pool process) does not have.

    Attributes:
        task_name: The registered task name that was not found.
        where: ``"worker"`` or ``"task process"``.
    """

    def __init__(self, task_name: str, where: str = "worker") -> None:
        super().__init__(task_name, where)
        self.task_name = task_name
        self.where = where

    def __str__(self) -> str:
        return (
            f"task {self.task_name!r} is not registered in this {self.where}; "
            "check that the worker's --module options define it"
        )


class TaskProcessDied(WorkerError):
    """The process running a plain ``def`` task exited (crash, OOM kill, os._exit).

    Only the attempt that process ran fails; the pool replaces the process.

    Attributes:
        exitcode: The dead process's exit code (negative: killed by that
            signal), or None when it could not be read.
    """

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode

    def __str__(self) -> str:
        if self.exitcode is None:
            return "task process died (exit code unknown)"
        text = f"task process died (exit code {self.exitcode}"
        if self.exitcode < 0:
            try:
                text += f", {signal.Signals(-self.exitcode).name}"
            except ValueError:
                pass
        return text + ")"


class DaskWorkerLost(WorkerError):
    """A Dask executor's future failed: the Dask worker running it died, or it was lost.

    Reported as an infrastructure failure of each attempt the future held.

    Attributes:
        detail: What Dask said (``KilledWorker: ...``).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"the Dask worker running this attempt died or lost it ({self.detail})"


class TaskTimeout(WorkerError, TimeoutError):
    """An attempt ran past its ``timeout_seconds`` and was stopped.

    A plain ``def`` task's process was killed (SIGKILL: no ``finally`` block
    or code after the blocking call runs); an ``async def`` task's coroutine
    was cancelled. A ``TimeoutError``, so ``except TimeoutError`` catches it.

    Attributes:
        task_name: The registered task name.
        timeout_s: The task's time limit, seconds.
    """

    def __init__(self, task_name: str, timeout_s: float) -> None:
        super().__init__(task_name, timeout_s)
        self.task_name = task_name
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"task {self.task_name} exceeded its timeout of {self.timeout_s:g} s"


class MemoryLimitExceeded(MemoryError, WorkerError):
    """A task process grew past its memory request plus the margin, and was killed.

    ``MemoryError`` comes first so that it is the class's solid base: picklers
    that re-create exceptions with ``cls.__new__(cls)`` (tblib's, which
    importing ``distributed`` installs for every exception class) then work.

    Attributes:
        task_name: The registered task name.
        request_bytes: The task's ``memory`` request, bytes.
        peak_bytes: The largest resident size seen, bytes.
        limit_bytes: The size that triggered the kill (request plus margin), bytes.
    """

    def __init__(
        self, task_name: str, request_bytes: float, peak_bytes: float, limit_bytes: float
    ) -> None:
        super().__init__(task_name, request_bytes, peak_bytes, limit_bytes)
        self.task_name = task_name
        self.request_bytes = request_bytes
        self.peak_bytes = peak_bytes
        self.limit_bytes = limit_bytes

    def __str__(self) -> str:
        return (
            f"task {self.task_name} exceeded its memory request of "
            f"{format_bytes(self.request_bytes)} (peak {format_bytes(self.peak_bytes)}, "
            f"killed above {format_bytes(self.limit_bytes)}); declare a larger "
            "resources={'memory': ...} or use less memory"
        )


def format_bytes(n: float) -> str:
    """Format a byte count for people: ``"100 MiB"``, ``"1.5 GiB"``, ``"512 B"``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n:.0f} B"


class WorkerShutDown(WorkerError):
    """The worker stopped before the attempt finished.

    Attributes:
        grace_s: The drain grace period, seconds.
        forced: True when a second signal cut the grace period short.
    """

    def __init__(self, grace_s: float, forced: bool = False) -> None:
        super().__init__(grace_s, forced)
        self.grace_s = grace_s
        self.forced = forced

    def __str__(self) -> str:
        if self.forced:
            return "worker shut down before the task finished (stopped without waiting)"
        return f"worker shut down before the task finished (grace period {self.grace_s:g} s)"


class OutcomeTooLarge(WorkerError):
    """An attempt's outcome is larger than the coordinator accepts in one message.

    Attributes:
        size: The outcome's encoded size, bytes.
        details: What the coordinator said.
    """

    def __init__(self, size: int, details: str = "") -> None:
        super().__init__(size, details)
        self.size = size
        self.details = details

    def __str__(self) -> str:
        return (
            f"the task's result ({self.size} bytes pickled) is larger than the coordinator "
            f"accepts in one message ({self.details}); return a smaller value, e.g. a path "
            "to data written to shared storage"
        )
