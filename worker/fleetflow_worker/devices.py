"""Which GPU devices each running attempt holds (pure bookkeeping, no I/O).

The coordinator counts ``gpu`` like any other quantity: it leases an attempt
to a worker only while the worker's free ``gpu`` covers the request. The
worker alone knows device indexes, so it picks the devices here, when the
attempt starts, and hands them back when it ends, however it ends. This
keeps the scheduling core unchanged and the device ids local to the machine
they mean something on.

Rules (:meth:`DeviceAllocator.acquire`):

* a request of ``gpu >= 1`` gets ``ceil(gpu)`` whole slots that nothing
  else holds any part of: whole-device requests never share a device;
* a fractional request (``0 < gpu < 1``) is packed: it goes to the
  partly used slot it fits best (least room left after it), and only then
  to an empty one, so fractions fill one device before taking the next;
* slots named in ``prefer`` (the devices a warm task process already
  uses) come before all others that qualify, then the lowest slot.

A request that fits the counted capacity may still not fit the devices
(three ``gpu=0.6`` attempts on two devices): :meth:`acquire` returns None
and the attempt waits until a release makes room.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DeviceAllocator", "Allocation"]

#: Amounts closer than this are equal (requests arrive as floats).
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Allocation:
    """The devices one attempt (or one batch) holds.

    Attributes:
        shares: ``((slot, amount), ...)``: how much of which slot is held.
        ids: The devices as ``CUDA_VISIBLE_DEVICES`` lists them, in order,
            each once.
    """

    shares: tuple[tuple[int, float], ...] = ()
    ids: tuple[str, ...] = ()

    @property
    def visible_devices(self) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` value, e.g. ``"0,2"``."""
        return ",".join(self.ids)


#: Holds nothing (a request without ``gpu``).
NO_DEVICES = Allocation()


class DeviceAllocator:
    """Assigns device slots to attempts.

    Args:
        slots: One device id per unit of ``gpu`` capacity (see
            :class:`fleetflow_worker.gpus.GpuPlan`); an id may repeat when
            the operator oversubscribes devices with ``--resource gpu=N``.
    """

    def __init__(self, slots: Sequence[str]) -> None:
        self.slots = tuple(slots)
        #: Held fraction of each slot, 0..1, by slot position.
        self.used = [0.0] * len(self.slots)

    def acquire(self, amount: float, prefer: Iterable[str] = ()) -> Allocation | None:
        """Pick devices for a request of ``amount`` gpu.

        Args:
            amount: The attempt's ``gpu`` request (0: no devices).
            prefer: Device ids to use first when they qualify.

        Returns:
            The allocation (empty for ``amount <= 0``), or None when the
            devices free now cannot hold the request (or it exceeds them all).
        """
        if amount <= _EPS:
            return NO_DEVICES
        preferred = set(prefer)

        def order(i: int) -> tuple[bool, int]:
            return (self.slots[i] not in preferred, i)

        if amount >= 1.0 - _EPS:
            need = math.ceil(amount - _EPS)
            free = sorted((i for i, u in enumerate(self.used) if u <= _EPS), key=order)
            if len(free) < need:
                return None
            chosen = sorted(free[:need])
            shares = tuple((i, 1.0) for i in chosen)
        else:
            fits = [i for i, u in enumerate(self.used) if u + amount <= 1.0 + _EPS]
            if not fits:
                return None
            best = min(
                fits,
                key=lambda i: (
                    self.slots[i] not in preferred,
                    self.used[i] <= _EPS,  # partly used slots before empty ones
                    round(1.0 - self.used[i] - amount, 6),  # then the tightest fit
                    i,
                ),
            )
            shares = ((best, amount),)
        for i, share in shares:
            self.used[i] += share
        ids = tuple(dict.fromkeys(self.slots[i] for i, _ in shares))
        return Allocation(shares, ids)

    def could_hold(self, amount: float) -> bool:
        """Whether a request of ``amount`` gpu fits these devices once all are free."""
        if amount <= _EPS:
            return True
        if amount >= 1.0 - _EPS:
            return math.ceil(amount - _EPS) <= len(self.slots)
        return bool(self.slots)

    def release(self, allocation: Allocation) -> None:
        """Hand an allocation's shares back (each allocation exactly once)."""
        for i, share in allocation.shares:
            left = self.used[i] - share
            # Float residue (0.1 + 0.2 - 0.1 - 0.2) is no share: a free device is 0.
            self.used[i] = 0.0 if left < _EPS else left

    @property
    def in_use(self) -> float:
        """Sum of the held shares (0 when every attempt gave its devices back)."""
        return sum(self.used)
