"""Retry delays while the coordinator is unreachable: pure, with injectable randomness."""

from __future__ import annotations

import random

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(
    failures: int, *, base_s: float = 0.05, cap_s: float = 2.0, rng: random.Random | None = None
) -> float:
    """Delay before the next try after ``failures`` consecutive failures, seconds.

    Exponential (``base_s * 2**(failures-1)``, capped at ``cap_s``) with
    "equal jitter": the delay is uniform in ``[d/2, d]``, so many workers that
    lost the same coordinator do not retry in lockstep, and no delay is zero.

    Args:
        failures: Consecutive failures so far (>= 1; 0 gives 0).
        base_s: First delay, seconds.
        cap_s: Largest delay, seconds.
        rng: Source of jitter; the module's global one by default.
    """
    if failures <= 0:
        return 0.0
    ceiling = min(cap_s, base_s * 2.0 ** min(failures - 1, 60))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Backoff:
    """Counts consecutive failures of one loop and hands out the next delay.

    Args:
        cap_s: Largest delay, seconds.
        base_s: First delay, seconds.
        rng: Source of jitter (seed it in tests).
    """

    def __init__(
        self, cap_s: float = 2.0, base_s: float = 0.05, rng: random.Random | None = None
    ) -> None:
        self.cap_s = cap_s
        self.base_s = base_s
        self.rng = rng
        self.failures = 0

    def failed(self) -> float:
        """Record a failure; returns how long to wait before the next try, seconds."""
        self.failures += 1
        return backoff_delay(self.failures, base_s=self.base_s, cap_s=self.cap_s, rng=self.rng)

    def succeeded(self) -> int:
        """Record a success; returns how many failures preceded it."""
        failures, self.failures = self.failures, 0
        return failures
