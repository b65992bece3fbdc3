"""The coordinator's clock: seconds since the epoch that a wall-clock step cannot jump.

Everything the scheduling core times (lease TTLs, retry delays, attempt and
flow run deadlines, the wait for workers to re-attach after a restart) is
measured on the ``now`` the edge passes in, which is also the time stamped on
events. Plain ``time.time()`` jumps when the system clock is stepped (NTP
correcting a wrong clock, an operator's ``date -s``, a VM resumed from a
pause): a step forward declared every worker lost and started every retry at
once, and a step back kept a dead worker's leases alive until the wall clock
caught up, leaving its flow runs RUNNING for as long as the step. See
docs/architecture.md, "The coordinator's clock".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["SteadyClock"]


class SteadyClock:
    """Wall-clock time that advances at the pace of the monotonic clock.

    Between two readings it follows ``wall`` as long as ``wall`` moved by
    about as much as ``monotonic`` (within ``step_s``). A larger difference
    is a step: it is not followed at once but kept as an offset, which is
    then bled away at ``slew`` seconds per elapsed second, so the clock
    rejoins the wall clock (a one-hour step in ten hours at the default 0.1)
    while every interval it measures stays within ``slew`` of real elapsed
    time. It never goes backwards.

    Args:
        wall: Seconds since the epoch (``time.time``).
        monotonic: A clock no one can step, seconds (``time.monotonic``).
        step_s: A wall-clock move this much larger or smaller than the
            monotonic one between two readings counts as a step, seconds.
        slew: How fast an offset is bled away, seconds per second (0 to 1).

    Attributes:
        steps: Steps seen so far.
        offset_s: Seconds added to the wall clock now (0 when in step).
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        step_s: float = 1.0,
        slew: float = 0.1,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self.step_s = step_s
        self.slew = slew
        self._last_mono = monotonic()
        self._last_wall = wall()
        self._last = self._last_wall
        self.offset_s = 0.0
        self.steps = 0

    def not_before(self, t: float) -> None:
        """Read no earlier than ``t`` from now on (seconds since the epoch).

        A restarted coordinator passes the latest time it had stored: if the
        wall clock is now behind it (it was stepped back, before or across the
        restart), the difference becomes the offset and is bled away as a step
        seen while running would be, so new events never stamp earlier than
        stored ones and stored deadlines are not stretched by the step at once.
        A non-finite ``t`` is ignored.
        """
        if not math.isfinite(t):
            return
        ahead = t - (self._wall() + self.offset_s)
        if ahead > 0:
            self.offset_s += ahead
            self._last = max(self._last, t)

    def __call__(self) -> float:
        """The current time, seconds since the epoch."""
        mono, wall = self._monotonic(), self._wall()
        elapsed = max(0.0, mono - self._last_mono)
        step = (wall - self._last_wall) - elapsed
        if abs(step) > self.step_s or not math.isfinite(step):
            self.offset_s -= step if math.isfinite(step) else 0.0
            self.steps += 1
        elif self.offset_s:
            bled = min(abs(self.offset_s), self.slew * elapsed)
            self.offset_s -= math.copysign(bled, self.offset_s)
        self._last_mono, self._last_wall = mono, wall
        now = max(self._last, wall + self.offset_s)
        self._last = now
        return now
