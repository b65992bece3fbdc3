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


def _ledger_line(ledger: str, *fields: object) -> None:
    """Append one line to a ledger the test reads (O_APPEND: lines never interleave)."""
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task
def logged_inc(x: int, ledger: str, seconds: float = 0.0) -> int:
    _ledger_line(ledger, x, os.getpid(), time.time())
    if seconds:
        time.sleep(seconds)
    return x + 1


@flow
def logged_map(n: int, ledger: str, seconds: float = 0.0):
    return collect(logged_inc.map(range(n), ledger=ledger, seconds=seconds))


@task(retries=1, retry_delay_seconds=3.0, retry_jitter=0.0)
def fail_once_then_wait(ledger: str) -> str:
    _ledger_line(ledger, "start", time.time())
    if len(Path(ledger).read_text().splitlines()) == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt"


@flow
def retry_after_delay(ledger: str):
    return fail_once_then_wait(ledger)


@task
def stamp(ledger: str, seconds: float) -> int:
    _ledger_line(ledger, "start", os.getpid(), time.time())
    time.sleep(seconds)
    _ledger_line(ledger, "end", os.getpid(), time.time())
    return os.getpid()


@flow
def stamped(ledger: str, seconds: float):
    return stamp(ledger, seconds)


@task(resources={"cpu": 0.5})
def chain_step(x: int, ledger: str, seconds: float) -> int:
    _ledger_line(ledger, "start", os.getpid(), time.time(), "chain", x)
    time.sleep(seconds)
    _ledger_line(ledger, "end", os.getpid(), time.time(), "chain", x)
    return x + 1


@task(resources={"cpu": 0.5})
def map_step(x: int, ledger: str, seconds: float) -> int:
    _ledger_line(ledger, "start", os.getpid(), time.time(), "map", x)
    time.sleep(seconds)
    _ledger_line(ledger, "end", os.getpid(), time.time(), "map", x)
    return x


@flow
def chain_and_map(ledger: str, seconds: float = 1.5):
    x = 0
    for _ in range(5):
        x = chain_step(x, ledger, seconds)
    return collect(map_step.map(range(20), ledger=ledger, seconds=seconds))


@task(retries=3, retry_delay_seconds=2.0, retry_jitter=0.0)
def always_fails(ledger: str) -> None:
    _ledger_line(ledger, "start", time.time())
    raise ValueError("always")


@flow
def always_failing(ledger: str):
    return always_fails(ledger)


@task(tags=["warehouse"], resources={"cpu": 0.25})
def tagged(x: int, ledger: str, seconds: float) -> int:
    _ledger_line(ledger, "start", os.getpid(), time.time(), x)
    time.sleep(seconds)
    _ledger_line(ledger, "end", os.getpid(), time.time(), x)
    return x


@flow
def tagged_map(n: int, ledger: str, seconds: float = 0.3):
    return collect(tagged.map(range(n), ledger=ledger, seconds=seconds))


@task(retries=3)
def gives_up(ledger: str) -> None:
    from fleetflow import NonRetryableError

    _ledger_line(ledger, "start", time.time())
    raise NonRetryableError("do not bother")


@flow
def non_retryable(ledger: str):
    return gives_up(ledger)


@task(retries=2, retry_delay_seconds=60.0)
def asks_for_retry(ledger: str) -> str:
    from fleetflow import Retry

    _ledger_line(ledger, "start", time.time())
    if len(Path(ledger).read_text().splitlines()) < 3:
        raise Retry(delay=0.3)
    return "third time"


@flow
def asked_retry(ledger: str):
    return asks_for_retry(ledger)


@task(retries=3, retry_on=(KeyError,))
def wrong_kind(ledger: str) -> None:
    _ledger_line(ledger, "start", time.time())
    raise ValueError("not a KeyError")


@flow
def retry_on_flow(ledger: str):
    return wrong_kind(ledger)


@task(resources={"cpu": 1})
def small_sleep(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@flow
def many_small(n: int, seconds: float = 0.05):
    return collect(small_sleep.map(range(n), seconds=seconds))


@task(resources={"cpu": 4})
def needs_four(ledger: str) -> float:
    _ledger_line(ledger, "big", time.time())
    return time.time()


@flow
def one_big(ledger: str):
    return needs_four(ledger)


@task(resources={"cpu": 1, "license": 1})
def needs_license() -> str:
    return "ran on a big worker"


@flow
def too_big():
    return needs_license()


@task
def kills_its_worker(ledger: str) -> None:
    import signal as _signal

    import psutil

    _ledger_line(ledger, "attempt", os.getpid(), time.time())
    for ancestor in psutil.Process().parents():  # task process -> forkserver -> worker
        if "fleetflow_worker" in " ".join(ancestor.cmdline()):
            os.kill(ancestor.pid, _signal.SIGKILL)
            break
    time.sleep(30)


@flow
def worker_killer(ledger: str):
    return kills_its_worker(ledger)


@task(pool="gpu", resources={"cpu": 1, "gpu": 1})
def on_gpu(x: int) -> str:
    return f"{x} on {os.environ.get('FLEETFLOW_TEST_POOL', '?')}"


@flow
def gpu_flow():
    return on_gpu(1)


@flow(timeout_seconds=3.0)
def slow_with_flow_timeout(ledger: str):
    return collect(map_step.map(range(6), ledger=ledger, seconds=5.0))
