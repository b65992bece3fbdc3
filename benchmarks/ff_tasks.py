"""fleetflow tasks and flows of the benchmark; workers load this file with --module."""

from __future__ import annotations

import workloads
from fleetflow import flow, task, unmapped


@task
def inc(x: int) -> int:
    return workloads.inc(x)


@task
def sleep_task(x: int, seconds: float) -> int:
    return workloads.sleep_task(x, seconds)


@task
def cpu_burn(x: int, iters: int) -> int:
    return workloads.cpu_burn(x, iters)


@task
def unoffered(x: int) -> int:
    """W5: no worker is connected while a map of this task is pending."""
    return x


@flow
def w1_map(n: int):
    return inc.map(range(n))


@flow
def w2_sleep(n: int, seconds: float):
    return sleep_task.map(range(n), unmapped(seconds))


@flow
def w3_one(x: int):
    return inc(x)


@flow
def w4_cpu(n: int, iters: int):
    return cpu_burn.map(range(n), unmapped(iters))


@flow
def w5_pending(n: int):
    return unoffered.map(range(n))
