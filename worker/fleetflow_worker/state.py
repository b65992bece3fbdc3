"""I/O-free bookkeeping of the attempts a worker holds.

An attempt is *held* from the moment its lease arrives until the coordinator
acknowledges its outcome. While held it is first ``RUNNING`` (task code
executes and takes one of the ``max_concurrency`` slots) and then
``REPORTING`` (its outcome waits in the report queue). Heartbeats list every
held attempt, so the coordinator keeps the lease alive until the outcome lands.

The table is the one owner of the free-slot count. A worker asks for leases
in two places at once, the long poll (LeaseTasks) and the lease piggybacked
on ReportOutcomes; each ask first reserves the slots it asks for
(:meth:`AttemptTable.reserve`), the leases of its answer start in those
slots, and the rest is given back (:meth:`AttemptTable.release`). So two
asks in flight never ask for the same slot, and a coordinator that grants what it is asked for never
makes the worker run more than ``max_concurrency`` attempts (issue 11).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["AttemptKey", "Phase", "CancelAction", "AttemptTable", "Reservation"]


class AttemptKey(NamedTuple):
    """Identifies one leased attempt: the fencing pair the coordinator checks."""

    task_run_id: int
    attempt: int


class Phase(enum.Enum):
    """Where a held attempt is."""

    RUNNING = "running"
    REPORTING = "reporting"


class CancelAction(enum.Enum):
    """What the runtime must do when the coordinator cancels an attempt."""

    #: Not running (unknown, or finished with its outcome queued): nothing.
    NONE = "none"
    #: An ``async def`` task: cancel its asyncio task; its outcome is dropped.
    CANCEL_TASK = "cancel_task"
    #: A plain ``def`` task: SIGKILL its process (the pool replaces it); no outcome.
    KILL_PROCESS = "kill_process"


@dataclass(slots=True, eq=False)
class _Slot:
    """One slot shared by the members of a lease batch still running."""

    remaining: int


@dataclass(slots=True, eq=False)
class Reservation:
    """Slots taken for one lease request in flight (see :meth:`AttemptTable.reserve`)."""

    #: Slots asked for and not yet used by a lease of the answer.
    remaining: int


@dataclass(slots=True)
class _Entry:
    is_async: bool
    phase: Phase = Phase.RUNNING
    cancelled: bool = False
    #: The batch slot this attempt shares (None: a slot of its own).
    slot: _Slot | None = None


class AttemptTable:
    """Which attempts the worker holds and how many slots are free.

    Args:
        max_concurrency: Most attempts in ``RUNNING`` at once (>= 1).

    Raises:
        ValueError: ``max_concurrency`` < 1.
    """

    def __init__(self, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        #: {AttemptKey: _Entry}, in lease order.
        self._entries: dict[AttemptKey, _Entry] = {}
        self._running = 0
        #: Slots reserved by lease requests in flight (the sum of their ``remaining``).
        self._reserved = 0

    @property
    def running(self) -> int:
        """Slots in use: attempts executing (or about to), a batch counting once."""
        return self._running

    @property
    def reserved(self) -> int:
        """Slots reserved by lease requests in flight, not yet used by a lease."""
        return self._reserved

    @property
    def free_slots(self) -> int:
        """How many more attempts (or batches) may be asked for now."""
        return max(0, self.max_concurrency - self._running - self._reserved)

    def reserve(self, most: int | None = None) -> Reservation:
        """Take the free slots (at most ``most``) for one lease request.

        Ask the coordinator for ``reservation.remaining`` leases, start the
        answer's leases with the reservation, then :meth:`release` it.
        """
        count = self.free_slots if most is None else max(0, min(most, self.free_slots))
        self._reserved += count
        return Reservation(count)

    def release(self, reservation: Reservation) -> int:
        """Give back the reserved slots the answer did not use; returns how many."""
        count, reservation.remaining = reservation.remaining, 0
        self._reserved -= count
        return count

    def _take_slot(self, reservation: Reservation | None) -> None:
        """One slot for a starting attempt or batch: a reserved one if the lease brought one."""
        if reservation is not None and reservation.remaining > 0:
            reservation.remaining -= 1
            self._reserved -= 1
        self._running += 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def start(
        self, key: AttemptKey, *, is_async: bool, reservation: Reservation | None = None
    ) -> bool:
        """Record a new lease; returns False for a duplicate of a held attempt.

        The lease uses a slot of ``reservation`` (the request it answers). A
        start beyond it may exceed ``max_concurrency`` (a coordinator that
        sends more than was asked for): dropping a lease would only delay it.
        """
        if key in self._entries:
            return False
        self._entries[key] = _Entry(is_async=is_async)
        self._take_slot(reservation)
        return True

    def start_batch(
        self, keys: list[AttemptKey], *, is_async: bool, reservation: Reservation | None = None
    ) -> list[AttemptKey]:
        """Record the leases of one batch, which share one slot (of ``reservation``).

        Returns:
            The keys recorded, in order: duplicates of held attempts are left out.
        """
        fresh = [key for key in dict.fromkeys(keys) if key not in self._entries]
        if fresh:
            slot = _Slot(len(fresh))
            for key in fresh:
                self._entries[key] = _Entry(is_async=is_async, slot=slot)
            self._take_slot(reservation)
        return fresh

    def finish(self, key: AttemptKey, *, has_outcome: bool = True) -> bool:
        """Task code ended; returns whether its outcome must be reported.

        A cancelled attempt, or one without an outcome, is forgotten here
        (False); any other moves to ``REPORTING`` until :meth:`acknowledged`.

        Raises:
            KeyError: the attempt is not running.
        """
        entry = self._entries.get(key)
        if entry is None or entry.phase is not Phase.RUNNING:
            raise KeyError(f"attempt {key} is not running")
        slot = entry.slot
        if slot is None:
            self._running -= 1
        else:
            entry.slot = None
            slot.remaining -= 1
            if slot.remaining == 0:
                self._running -= 1
        if entry.cancelled or not has_outcome:
            del self._entries[key]
            return False
        entry.phase = Phase.REPORTING
        return True

    def acknowledged(self, key: AttemptKey) -> None:
        """The coordinator acknowledged the outcome: forget the attempt."""
        entry = self._entries.get(key)
        if entry is not None and entry.phase is Phase.REPORTING:
            del self._entries[key]

    def cancel(self, key: AttemptKey) -> CancelAction:
        """The coordinator says the lease is gone; decide what to do."""
        entry = self._entries.get(key)
        if entry is None or entry.phase is not Phase.RUNNING:
            return CancelAction.NONE
        if entry.cancelled:
            return CancelAction.NONE
        entry.cancelled = True
        return CancelAction.CANCEL_TASK if entry.is_async else CancelAction.KILL_PROCESS

    def is_cancelled(self, key: AttemptKey) -> bool:
        """Whether the coordinator cancelled this (running) attempt."""
        entry = self._entries.get(key)
        return entry is not None and entry.cancelled

    def held(self) -> list[AttemptKey]:
        """Every held attempt, running or reporting, in lease order (for heartbeats)."""
        return list(self._entries)

    def validate(self) -> None:
        """Check the invariants; for tests.

        Raises:
            AssertionError: the running count disagrees with the entries.
        """
        running = [e for e in self._entries.values() if e.phase is Phase.RUNNING]
        slots = {id(e.slot): e.slot for e in running if e.slot is not None}
        in_use = sum(1 for e in running if e.slot is None) + len(slots)
        assert in_use == self._running, (in_use, self._running)
        assert 0 <= self._reserved <= self.max_concurrency, self._reserved
        for slot in slots.values():
            members = sum(1 for e in running if e.slot is slot)
            assert members == slot.remaining, (members, slot.remaining)
        assert all(not e.cancelled for e in self._entries.values() if e.phase is Phase.REPORTING), (
            "a cancelled attempt reached REPORTING"
        )
