"""Tasks and flows the end-to-end tests submit; workers import this file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from fleetflow import flow, task


class FlakyError(RuntimeError):
    """Raised by `flaky` until it has failed often enough."""


@task
def inc(x: int) -> int:
    return x + 1


@task
def collect(xs: list) -> list:
    return list(xs)


@task
def listing(n: int) -> list[int]:
    return list(range(n))


@flow
def map_inc(n: int):
    return collect(inc.map(range(n)))


@flow
def map_over_upstream(n: int):
    return collect(inc.map(listing(n)))


def _count(ledger: str) -> int:
    with open(ledger, "a") as f:
        f.write(f"{os.getpid()}\n")
    return len(Path(ledger).read_text().split())


@task(retries=2, retry_delay_seconds=0.2)
def flaky(ledger: str, failures: int) -> str:
    if _count(ledger) <= failures:
        raise FlakyError(f"failure number {_count_lines(ledger)}")
    return "recovered"


def _count_lines(ledger: str) -> int:
    return len(Path(ledger).read_text().split())


@flow
def flaky_flow(ledger: str, failures: int = 2, retries: int = 2):
    return flaky.with_options(retries=retries)(ledger, failures)


@task
def slow_marked(ledger: str, seconds: float) -> int:
    _count(ledger)
    time.sleep(seconds)
    return os.getpid()


@flow
def slow_flow(ledger: str, seconds: float = 3.0):
    return slow_marked(ledger, seconds)


@task(resources={"cpu": 0.1})
async def async_sleep(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


@flow
def async_map(n: int, seconds: float = 0.01):
    return collect(async_sleep.map(range(n), seconds))
