"""Flows the usage, right-sizing and task-logger tests run; workers import this file."""

from __future__ import annotations

import asyncio
import time

from fleetflow import flow, get_logger, task

log = get_logger()


@task(resources={"cpu": 1, "memory": "2GiB"})
def hog(i: int, megabytes: int = 200, hold_s: float = 0.3) -> int:
    """Allocate about ``megabytes`` MB (touching every page), hold it, return its size."""
    block = bytearray(megabytes * 1_000_000)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    log.info("allocated", item=i, megabytes=megabytes)
    time.sleep(hold_s)
    return len(block) // 1_000_000


@task(resources={"cpu": 1, "memory": "100MiB"})
def small(i: int) -> int:
    """Uses what it asks for: no advice."""
    return i * 2


@task(resources={"cpu": 0.1})
async def pair(first: list, second: list) -> list:
    return [first, second]


@flow
def sized(n: int = 3, megabytes: int = 200):
    return pair(hog.map(range(n), megabytes), small.map(range(n)))


class ParseError(Exception):
    """Raised by ``chatty`` after it logged a few lines."""


@task(resources={"cpu": 0.5})
def chatty(i: int, fail: bool = False) -> int:
    """Log lines through fleetflow.get_logger() in a task process, then maybe fail."""
    for step in range(25):
        log.info("chatty_step", item=i, step=step)
    if fail:
        log.error("chatty_giving_up", item=i)
        raise ParseError(f"item {i} does not parse")
    return i


@task(resources={"cpu": 0.1})
async def chatty_async(i: int) -> int:
    """Log a line from an ``async def`` task, which runs on the worker's own loop."""
    await asyncio.sleep(0.01)
    log.info("chatty_async_step", item=i)
    return i


@flow
def logged(n: int = 3):
    return pair(chatty.map(range(n)), chatty_async.map(range(n)))


@flow
def logged_failure():
    return chatty(7, fail=True)
