"""Tasks and flows of the worker lifecycle end-to-end tests (tests/e2e/test_worker_lifecycle.py).

Workers import this file by path. Each task that matters appends a line to a
*ledger* file, so a test can count attempts and see which lines ran.
"""

from __future__ import annotations

import os
import time

from fleetflow import flow, task


def _mark(ledger: str, text: str) -> None:
    with open(ledger, "a") as f:
        f.write(f"{text}\n")


@task
def whoami() -> int:
    """The pid of the task process that ran this."""
    return os.getpid()


@flow
def whoami_flow():
    return whoami()


@task(timeout_seconds=2)
def sleep_past_timeout(ledger: str, seconds: float = 30.0) -> str:
    _mark(ledger, f"start {os.getpid()}")
    time.sleep(seconds)
    _mark(ledger, "after")  # must never run: the process is killed at 2 s
    return "slept"


@flow
def timeout_flow(ledger: str):
    return sleep_past_timeout(ledger)


@task(timeout_seconds=1, retries=3)
def always_too_slow(ledger: str) -> str:
    _mark(ledger, f"start {os.getpid()}")
    time.sleep(60)
    _mark(ledger, "after")
    return "slept"


@flow
def timeout_retries_flow(ledger: str):
    return always_too_slow(ledger)


@task
def spin(ledger: str, index: int, seconds: float) -> int:
    """Keep one CPU busy for ``seconds`` of wall time."""
    _mark(ledger, f"start {index} {os.getpid()}")
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return index


@flow
def saturate(ledger: str, n: int = 2, seconds: float = 8.0):
    return spin.map(ledger, range(n), seconds)


@task(resources={"memory": "100MiB"})
def hog(mib: int, hold_s: float) -> int:
    block = b"\x01" * (mib * 2**20)
    time.sleep(hold_s)
    return len(block) // 2**20


@flow
def hog_flow(mib: int = 300, hold_s: float = 6.0):
    return hog(mib, hold_s)


@task
def slow_first(ledger: str, seconds: float) -> int:
    """Sleep ``seconds`` on the first attempt only; later attempts return at once."""
    first = not os.path.exists(ledger)
    _mark(ledger, f"start {os.getpid()}")
    if first:
        time.sleep(seconds)
    return os.getpid()


@flow
def slow_first_flow(ledger: str, seconds: float):
    return slow_first(ledger, seconds)
