"""Tasks the fault tests (test_faults.py) submit; workers import this file.

Every task appends a line to a ledger the test reads (O_APPEND: lines never
interleave), so executions are counted outside fleetflow.
"""

from __future__ import annotations

import os
import time

from fleetflow import flow, task


def _ledger_line(ledger: str, *fields: object) -> None:
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task(resources={"cpu": 1})
def large_result(x: int, ledger: str, seconds: float, size: int) -> bytes:
    """Sleep, then return ``size`` bytes (over the inline limit: stored, not inline)."""
    _ledger_line(ledger, x, os.getpid(), time.time())
    time.sleep(seconds)
    return bytes([x % 256]) * size


@task
def lengths(blobs: list) -> list[int]:
    return [len(b) for b in blobs]


@flow
def large_results(n: int, ledger: str, seconds: float = 1.0, size: int = 1 << 21):
    return lengths(large_result.map(range(n), ledger=ledger, seconds=seconds, size=size))


@task
def quick(x: int, ledger: str) -> int:
    """About a millisecond: leased in batches of dozens."""
    _ledger_line(ledger, x, os.getpid(), time.time())
    time.sleep(0.001)
    return x + 1


@task
def total(xs: list) -> int:
    return sum(xs)


@flow
def quick_map(n: int, ledger: str):
    return total(quick.map(range(n), ledger=ledger))


@task(retries=0)
def marked_sleep(ledger: str, seconds: float) -> int:
    """Write ``start PID`` (the task process: what the OOM killer would pick), then sleep."""
    _ledger_line(ledger, "start", os.getpid())
    time.sleep(seconds)
    return os.getpid()


@flow
def one_sleep(ledger: str, seconds: float = 3.0):
    return marked_sleep(ledger, seconds)
