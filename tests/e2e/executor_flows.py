"""Flows for the executor tests: where each attempt ran."""

import os
import threading

from fleetflow import flow, task


@task
def where(x: int) -> tuple[int, int, str]:
    return x, os.getpid(), threading.current_thread().name


@task
def total(rows: list) -> int:
    return sum(row[0] for row in rows)


@flow
def spread(n: int):
    return where.map(range(n))
