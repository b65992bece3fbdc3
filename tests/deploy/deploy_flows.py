"""A flow for the deployment tests: task runs that take a while."""

from __future__ import annotations

import time

from fleetflow import flow, task


@task(resources={"cpu": 1, "memory": "64Mi"})
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def naps(n: int = 3, seconds: float = 1.0):
    return nap.map([seconds] * n)
