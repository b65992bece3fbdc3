"""Tasks and flows of ``test_partition.py``; its workers import this file.

Every attempt appends ``start`` and ``end`` lines to a ledger outside
fleetflow, naming the item, the task run and attempt the worker bound to it,
the worker id, the task process's pid and network namespace inode, so the
test can tell which worker (and which side of the cut link) ran what.
"""

from __future__ import annotations

import os
import time

import structlog
from fleetflow import flow, task


def _ledger_line(ledger: str, *fields: object) -> None:
    """Append one line (O_APPEND: concurrent writers never interleave)."""
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _stamp(ledger: str, phase: str, x: int) -> None:
    ids = structlog.contextvars.get_contextvars()  # bound by the worker around each attempt
    _ledger_line(
        ledger,
        phase,
        x,
        ids.get("task_run_id", 0),
        ids.get("attempt", 0),
        ids.get("worker_id", "-"),
        os.getpid(),
        os.stat("/proc/self/ns/net").st_ino,
        repr(time.time()),
    )


def _slow(x: int, ledger: str, seconds: float) -> int:
    _stamp(ledger, "start", x)
    time.sleep(seconds)
    _stamp(ledger, "end", x)
    return 1000 + 7 * x


@task
def part_item(x: int, ledger: str, seconds: float) -> int:
    """Any worker of the default pool may run it."""
    return _slow(x, ledger, seconds)


@task(pool="island")
def island_item(x: int, ledger: str, seconds: float) -> int:
    """Only the worker inside the network namespace serves the ``island`` pool."""
    return _slow(x, ledger, seconds)


@task(pool="mainland")
def mainland_item(x: int, ledger: str, seconds: float) -> int:
    """Only the worker in the root namespace serves the ``mainland`` pool."""
    return _slow(x, ledger, seconds)


@task
def part_collect(xs: list) -> list:
    return list(xs)


@flow
def partition_map(n: int, ledger: str, seconds: float = 1.0):
    return part_collect(part_item.map(range(n), ledger=ledger, seconds=seconds))


@flow
def island_map(n: int, ledger: str, seconds: float = 1.0):
    return island_item.map(range(n), ledger=ledger, seconds=seconds)


@flow
def mainland_map(n: int, ledger: str, seconds: float = 0.2):
    return mainland_item.map(range(n), ledger=ledger, seconds=seconds)
