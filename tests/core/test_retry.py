"""The backoff table: a pure function with an injected random source."""

from __future__ import annotations

import pytest
from fleetflow_coordinator.core.retry import RetryPolicy, retry_delay


@pytest.mark.parametrize(
    ("policy", "failure", "draw", "requested", "expected"),
    [
        (RetryPolicy(retries=3, delay_s=2.0), 1, 0.5, None, 2.0),
        (RetryPolicy(retries=3, delay_s=2.0), 3, 0.5, None, 2.0),
        (RetryPolicy(retries=3, delay_s=1.0, backoff=2.0), 1, 0.5, None, 1.0),
        (RetryPolicy(retries=3, delay_s=1.0, backoff=2.0), 2, 0.5, None, 2.0),
        (RetryPolicy(retries=3, delay_s=1.0, backoff=2.0), 4, 0.5, None, 8.0),
        (RetryPolicy(retries=9, delay_s=1.0, backoff=2.0, max_delay_s=5.0), 6, 0.5, None, 5.0),
        (RetryPolicy(retries=3, delays_s=(1.0, 10.0, 100.0)), 2, 0.5, None, 10.0),
        (RetryPolicy(retries=5, delays_s=(1.0, 10.0)), 5, 0.5, None, 10.0),
        # jitter 0.2: draw 0 -> x0.8, draw 0.5 -> x1.0, draw ~1 -> x1.2
        (RetryPolicy(retries=1, delay_s=10.0, jitter=0.2), 1, 0.0, None, 8.0),
        (RetryPolicy(retries=1, delay_s=10.0, jitter=0.2), 1, 0.5, None, 10.0),
        (RetryPolicy(retries=1, delay_s=10.0, jitter=0.2), 1, 0.75, None, 11.0),
        (RetryPolicy(retries=1, delay_s=10.0, jitter=0.2, max_delay_s=10.5), 1, 0.99, None, 10.5),
        (RetryPolicy(retries=1, delay_s=0.0, jitter=0.5), 1, 0.9, None, 0.0),
        # a delay the task asked for wins and is not jittered
        (RetryPolicy(retries=1, delay_s=10.0, jitter=0.2), 1, 0.0, 3.0, 3.0),
    ],
)
def test_backoff_table(policy, failure, draw, requested, expected):
    assert retry_delay(policy, failure, lambda: draw, requested) == pytest.approx(expected)


def test_a_zero_delay_stays_zero_when_the_backoff_overflows():
    # 2.0 ** 1024 overflows: a zero base delay must not become the one-day cap.
    policy = RetryPolicy(retries=2000, delay_s=0.0, backoff=2.0)
    assert retry_delay(policy, 1100, lambda: 0.5) == 0.0
    assert retry_delay(RetryPolicy(retries=2000, delay_s=1.0, backoff=2.0), 1100, lambda: 0.5) == (
        86_400.0
    )
