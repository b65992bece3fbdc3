"""Retry policy of client calls: which failures are retried, after how long, until when."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import grpc

from fleetflow._rpc_errors import translate

__all__ = ["Backoff", "RetryBudget", "deadline_after", "remaining_s"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Backoff:
    """Retry policy for RPCs that fail with ``UNAVAILABLE``.

    The n-th retry (from 0) waits ``d/2 + uniform(0, d/2)`` seconds with
    ``d = min(cap_s, base_s * 2**n)`` (exponential backoff with "equal
    jitter").

    Attributes:
        base_s: First delay bound, seconds. Default 0.05 s.
        cap_s: Largest delay, seconds. Default 2 s.
        give_up_s: Stop retrying this long after the first failure, seconds.
            Default 30 s. A caller's own timeout, when shorter, wins.
    """

    base_s: float = 0.05
    cap_s: float = 2.0
    give_up_s: float = 30.0

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (from 0), seconds."""
        bound = min(self.cap_s, self.base_s * 2.0 ** min(retry, 64))
        return bound / 2 + rng.uniform(0, bound / 2)


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic`` deadline ``timeout`` seconds from now (None: no deadline).

    Raises:
        ValueError: ``timeout`` is negative or NaN.
    """
    if timeout is None:
        return None
    if not timeout >= 0:  # NaN too: it made result() give up at once
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return time.monotonic() + timeout


def remaining_s(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class RetryBudget:
    """Decides whether a failed RPC is retried and after how long.

    Args:
        backoff: The policy.
        deadline: The caller's deadline on the ``time.monotonic`` clock, or None.
        rng: Jitter source.
    """

    def __init__(self, backoff: Backoff, deadline: float | None, rng: random.Random) -> None:
        self._backoff = backoff
        self._rng = rng
        self.deadline = deadline
        #: True once a retry was refused because the caller's deadline came first.
        self.deadline_hit = False
        self._retries = 0
        self._give_up_at = math.inf

    def delay_s(self, code: grpc.StatusCode | None) -> float | None:
        """Seconds to wait before retrying after ``code``; None to give up."""
        if code is not _UNAVAILABLE:
            return None
        now = time.monotonic()
        self.give_up_at(now)
        retry_at = now + self._backoff.delay_s(self._retries, self._rng)
        if self.deadline is not None and retry_at > self.deadline:
            self.deadline_hit = True
            return None
        if retry_at > self._give_up_at:
            return None
        self._retries += 1
        return retry_at - now

    def give_up_at(self, now: float) -> float:
        """When retries stop: ``give_up_s`` after the first failure (``now`` if none yet)."""
        if self._give_up_at == math.inf:
            self._give_up_at = now + self._backoff.give_up_s
        return self._give_up_at

    def reset(self) -> None:
        """Start over after progress (a watch stream delivered events)."""
        self._retries = 0
        self._give_up_at = math.inf

    def error(self, exc: grpc.RpcError, flow_run_id: str | None = None) -> Exception:
        """The fleetflow error a caller sees for a call that is not retried.

        Args:
            exc: The failed call.
            flow_run_id: The flow run the call was about, if any.

        Returns:
            :class:`TimeoutError` when the caller's deadline ended the call or
            its retries, else what :func:`~fleetflow._rpc_errors.translate` gives.
        """
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        deadline_passed = self.deadline is not None and time.monotonic() >= self.deadline
        if self.deadline_hit or (code is grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed):
            return TimeoutError(f"timed out talking to the coordinator ({code.name}: {details})")
        return translate(code, details, flow_run_id)
