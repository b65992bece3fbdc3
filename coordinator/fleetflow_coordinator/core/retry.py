"""Retry delays: a pure function of the policy, the failure number and a random draw.

The rules (Prefect's ``retry_delay_seconds`` list and exponential backoff with
a cap and jitter, as in AWS's "Exponential Backoff And Jitter"):

- ``delays`` given: failure *k* (1-based) waits ``delays[k-1]``; past the end of
  the list the last delay repeats.
- otherwise: ``base * backoff ** (k - 1)``, capped at ``max_delay``
  (``backoff`` 1 means a constant delay).
- jitter: the delay is multiplied by a factor drawn uniformly from
  ``[1 - jitter, 1 + jitter]`` (``jitter`` 0 switches it off), then capped again.
- a task may ask for a specific delay (``fleetflow.Retry(delay=...)``): that
  value is used without jitter, but still capped.
- no delay exceeds ``max_delay`` or :data:`MAX_RETRY_DELAY_S` (one day).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["RetryPolicy", "retry_delay", "DEFAULT_JITTER", "MAX_RETRY_DELAY_S"]

#: Jitter factor applied unless a task sets another: +-20%.
DEFAULT_JITTER = 0.2
#: No retry waits longer than a day, whatever the policy or the task asks for.
MAX_RETRY_DELAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a task run is retried after its code fails.

    Attributes:
        retries: Retries after the first attempt.
        delay_s: Base delay before a retry, seconds.
        delays_s: One delay per retry, seconds; overrides ``delay_s``/``backoff``.
        backoff: Multiplier per further failure (1 = constant, 2 = doubling).
        max_delay_s: Cap on any delay, seconds (0 = no cap).
        jitter: Relative jitter in ``[0, 1]``.
    """

    retries: int = 0
    delay_s: float = 0.0
    delays_s: Sequence[float] = field(default_factory=tuple)
    backoff: float = 1.0
    max_delay_s: float = 0.0
    jitter: float = 0.0


def retry_delay(
    policy: RetryPolicy,
    failure: int,
    uniform: Callable[[], float],
    requested_s: float | None = None,
) -> float:
    """Seconds to wait before the retry that follows failure number ``failure``.

    Args:
        policy: The task's policy.
        failure: 1 for the first failure, 2 for the second, ...
        uniform: Returns a float in ``[0, 1)``; injected so tests are exact.
        requested_s: A delay the task asked for itself, used as given.

    Returns:
        A non-negative delay in seconds.
    """
    cap = policy.max_delay_s if policy.max_delay_s > 0 else MAX_RETRY_DELAY_S
    cap = min(cap, MAX_RETRY_DELAY_S)
    if requested_s is not None and requested_s >= 0:
        return min(requested_s, cap)  # inf and huge requests are capped too
    if policy.delays_s:
        delay = policy.delays_s[min(failure, len(policy.delays_s)) - 1]
    else:
        try:
            delay = policy.delay_s * policy.backoff ** max(failure - 1, 0)
        except OverflowError:  # a huge backoff: the cap decides (a zero delay stays zero)
            delay = math.inf if policy.delay_s > 0 else 0.0
    delay = min(delay, cap)
    if policy.jitter > 0 and delay > 0:
        delay = min(delay * (1.0 + policy.jitter * (2.0 * uniform() - 1.0)), cap)
    return max(delay, 0.0)
