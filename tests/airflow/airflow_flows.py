"""A flow that runs long enough to be cancelled from Airflow."""

from __future__ import annotations

import time

from fleetflow import flow, task


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def naps(n: int = 2, seconds: float = 60.0):
    return nap.map([seconds] * n)
