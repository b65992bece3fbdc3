"""Which seat of the task-process pool an attempt takes, and which GPU devices with it.

A seat's process keeps what earlier attempts loaded (imports, module-level
caches, :func:`fleetflow.keep` values, a CUDA context), so the pool prefers
the seat that last ran the same task, and for a GPU attempt the seat whose
process already uses the devices it gets. A process whose
``CUDA_VISIBLE_DEVICES`` was set (CUDA reads it once, when it initialises)
only ever runs attempts with the same devices; an attempt that needs other
devices takes a seat whose process is replaced first.

:func:`pick` is pure: the pool calls it with its free seats whenever one is
freed or devices come back, and waits while it returns None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from fleetflow_worker._process import TaskProcess
from fleetflow_worker.devices import NO_DEVICES, Allocation, DeviceAllocator

__all__ = ["Seat", "Pick", "pick", "binding_of"]


@dataclass(eq=False)
class Seat:
    """Room for one attempt: its process, or the replacement being started."""

    #: One of the ``size`` seats kept warm; the others exist only while busy.
    core: bool = True
    proc: TaskProcess | None = None
    spawning: asyncio.Future[TaskProcess] | None = None
    #: ``CUDA_VISIBLE_DEVICES`` the process was given ("" for none; None: not
    #: yet set, so any value may still be given). Reset with the process.
    bound: str | None = None
    #: The task its process last ran (None: none yet). Reset with the process.
    last_task: str | None = None
    #: When its last attempt started (``time.monotonic()``), for least recently used.
    last_used: float = 0.0

    def forget(self) -> None:
        """Its process is gone: the next one starts bound to nothing and cold."""
        self.bound = None
        self.last_task = None


@dataclass(frozen=True, slots=True)
class Pick:
    """A seat and the devices an attempt gets.

    Attributes:
        seat: The seat (a new surplus one when ``fresh``).
        devices: The devices held (empty for a request without ``gpu``).
        binding: The ``CUDA_VISIBLE_DEVICES`` the attempt runs with (None:
            leave the process's environment alone: a worker without GPUs).
        fresh: ``seat`` is new and must join the pool.
    """

    seat: Seat
    devices: Allocation
    binding: str | None
    fresh: bool = False


def binding_of(devices: Allocation, gpu_worker: bool) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for an attempt: its devices; "" for none on a GPU worker."""
    if devices.ids:
        return devices.visible_devices
    return "" if gpu_worker else None


def _rank(seat: Seat, task_name: str, binding: str | None) -> tuple[bool, bool, bool, bool, float]:
    """Lower is better: keeps the state other tasks left where it is when it can."""
    compatible = binding is None or seat.bound is None or seat.bound == binding
    return (
        not compatible,  # a seat whose process must be replaced comes last
        seat.last_task != task_name,  # warm for this task
        seat.bound != binding,  # already on these devices
        seat.last_task is not None,  # then a cold seat, evicting nobody
        seat.last_used,  # then the least recently used
    )


def pick(
    free: Sequence[Seat],
    task_name: str,
    gpu: float,
    devices: DeviceAllocator,
    can_grow: bool,
) -> Pick | None:
    """Choose a seat and devices for an attempt, or None if it must wait.

    Devices are acquired on ``devices`` (the caller releases them when the
    attempt ends). A GPU attempt first tries the devices of the most recently
    used free seat that ran the same task, so its warm process is reused;
    otherwise it prefers devices no other task's free warm process is bound
    to, so it does not push that task off its process. A warm process that
    would have to be replaced is replaced only when no surplus seat may be added.

    Args:
        free: The free seats.
        task_name: The attempt's task.
        gpu: Its ``gpu`` request (0: none).
        devices: The worker's device allocator.
        can_grow: Whether a surplus seat may be added when none is free.
    """
    gpu_worker = bool(devices.slots)
    if gpu > 0:
        warm = [s for s in free if s.last_task == task_name and s.bound]
        for seat in sorted(warm, key=lambda s: -s.last_used):
            held = devices.acquire(gpu, prefer=(seat.bound or "").split(","))
            if held is None:
                return None
            if held.visible_devices == seat.bound:
                return Pick(seat, held, seat.bound)
            devices.release(held)
        # Other tasks' warm processes keep their devices when others are free.
        theirs = {
            d
            for s in free
            if s.bound and s.last_task not in (None, task_name)
            for d in s.bound.split(",")
        }
        held = devices.acquire(gpu, prefer=[d for d in devices.slots if d not in theirs])
        if held is None:
            return None
    else:
        held = NO_DEVICES
    binding = binding_of(held, gpu_worker)
    if free:
        seat = min(free, key=lambda s: _rank(s, task_name, binding))
        # (a process bound to no device, "", that ran CPU attempts is cheap to replace)
        evicts = (
            _rank(seat, task_name, binding)[0] and bool(seat.bound) and seat.last_task is not None
        )
        if not (evicts and can_grow):
            return Pick(seat, held, binding)
        # Every free seat's process is warm and bound to other devices: a
        # surplus seat costs one process start, an eviction a rebuilt model.
    if can_grow:
        return Pick(Seat(core=False), held, binding, fresh=True)
    devices.release(held)
    return None
