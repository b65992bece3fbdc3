"""Deep graphs for tests/e2e/test_deep_graphs.py (issue 11, item 2): workers load this file."""

from __future__ import annotations

import asyncio

from fleetflow import flow, task


@task(resources={"cpu": 0.01})
async def step(x: int) -> int:
    return x + 1


@task(resources={"cpu": 0.01})
async def step_with_first(x: int, first: int) -> int:
    return x + first


@task(resources={"cpu": 0.01})
async def head(seconds: float, fail: bool) -> int:
    await asyncio.sleep(seconds)
    if fail:
        raise ValueError("the head of the chain failed")
    return 0


@flow
def chain(n: int, seconds: float = 0.0, fail: bool = False):
    """A chain of n plain nodes, each using the one before."""
    x = head(seconds, fail)
    for _ in range(n - 1):
        x = step(x)
    return x


@flow
def deep_and_wide(n: int, seconds: float = 0.0, fail: bool = False):
    """A chain of n nodes where every node also uses the first."""
    first = head(seconds, fail)
    x = first
    for _ in range(n - 1):
        x = step_with_first(x, first)
    return x


@flow(timeout_seconds=2.0)
def timed_chain(n: int, seconds: float = 60.0):
    """A chain whose head outlasts the flow run's timeout."""
    x = head(seconds, False)
    for _ in range(n - 1):
        x = step(x)
    return x
