"""Flows for the run, inspect and dashboard views of issue 17; workers import this file."""

from __future__ import annotations

import time

from fleetflow import flow, task


@task
def check(i: int, every: int) -> int:
    if every and i % every == 0:
        raise ValueError(f"item {i} is bad")
    return i


@task
def total(xs: list) -> int:
    return sum(xs)


@flow
def some_fail(n: int, every: int):
    """``n`` checks of which every ``every``-th fails; the sum never runs (upstream failed)."""
    return total(check.map(range(n), every=every))


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def naps(n: int, seconds: float):
    """``n`` tasks sleeping ``seconds`` each, then their sum."""
    return total(nap.map([seconds] * n))


@task(resources={"cpu": 1, "gpu": 1})
def on_gpu(x: int) -> int:
    return x


@flow
def wants_gpu():
    return on_gpu(1)


@task(pool="nowhere")
def elsewhere(x: int) -> int:
    return x


@flow
def wants_pool():
    return elsewhere(1)


@task(tags=["warehouse"], resources={"cpu": 0.25})
def load_table(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def warehouse_loads(n: int, seconds: float):
    """``n`` tasks tagged "warehouse", sleeping ``seconds`` each."""
    return total(load_table.map([seconds] * n))


@task
def slow_check(i: int, seconds: float, every: int) -> int:
    time.sleep(seconds)
    if every and i % every == every - 1:
        raise ValueError(f"item {i} is bad")
    return i


@task
def double(x: int) -> int:
    time.sleep(0.05)
    return 2 * x


@flow
def stream_demo(n: int, seconds: float):
    """A picture for the docs: a map, a map over it item by item where some fail, a fan-in."""
    doubled = double.map(range(n))
    return total(slow_check.map(doubled, seconds=seconds, every=5))
