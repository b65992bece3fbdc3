"""The task bodies every system runs, so each one does exactly the same work.

Plain functions only (no fleetflow, Dask or Prefect import): fleetflow wraps
them in ``ff_tasks.py``, the peers in ``peers.py``. Kept free of third-party
imports so any process (pool child, Dask worker, Prefect subprocess) can import
it cheaply.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Workload sizes: (full run, --quick).
SIZES = {
    "W1_small": (1_000, 200),
    "W1": (10_000, 1_000),
    "W1_large": (100_000, 2_000),
    "W2": (2_000, 200),
    "W3": (200, 20),
    "W4": (200, 40),
    "W5": (100_000, 10_000),
    "W5_large": (1_000_000, 50_000),
    "W6_agents": (200, 40),
}

#: Seconds each W2 task sleeps.
W2_SLEEP_S = 0.010
#: Target seconds of one W4 task.
W4_TARGET_S = 0.050


def inc(x: int) -> int:
    """W1, W3, W6: the no-op."""
    return x + 1


def sleep_task(x: int, seconds: float = W2_SLEEP_S) -> int:
    """W2: sleeps, returns its input."""
    time.sleep(seconds)
    return x


def cpu_burn(x: int, iters: int) -> int:
    """W4: pure-Python CPU work; ``iters`` is calibrated to about 50 ms."""
    acc = x
    for i in range(iters):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def calibrate_cpu_burn(target_s: float = W4_TARGET_S) -> int:
    """Iterations of :func:`cpu_burn` that take about ``target_s`` here (median of 5)."""
    iters = 20_000
    while True:  # grow until one call is measurable (bounded: iters doubles)
        t0 = time.perf_counter()
        cpu_burn(0, iters)
        dt = time.perf_counter() - t0
        if dt > 0.01 or iters > 50_000_000:
            break
        iters *= 2
    per_iter = dt / iters
    iters = max(1, int(target_s / per_iter))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        cpu_burn(0, iters)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return max(1, int(iters * target_s / samples[2]))


def blocked(x: int, release_file: str, max_wait_s: float = 900.0) -> int:
    """W5 (peers): holds its slot until ``release_file`` exists (bounded in time)."""
    deadline = time.monotonic() + max_wait_s
    path = Path(release_file)
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return x


def pid_of_this_process(_: int = 0) -> int:
    """Used in smoke checks: which process ran the task."""
    return os.getpid()
