"""Tasks the worker tests run (loaded by path, in the test process and in pool processes)."""

import asyncio
import os
import sys
import threading
import time

from fleetflow import task


class Unpicklable:
    def __init__(self):
        self.lock = threading.Lock()


@task
def double(x):
    return 2 * x


@task
def add(a, b=10, *rest, scale=1, **extra):
    return (a + b + sum(rest) + sum(extra.values())) * scale


@task
def split_range(n):
    return list(range(n))


@task
def as_tuple(n):
    return tuple(range(n))


@task
def as_dict(n):
    return {i: i for i in range(n)}


@task
def total(values):
    return sum(values)


@task
def boom(x):
    raise ValueError(f"bad value {x}")


@task
def exit_task(code):
    sys.exit(code)


@task
def die(code):
    os._exit(code)


@task
def sleep_sync(seconds):
    time.sleep(seconds)
    return seconds


@task
def spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return seconds


@task
def unpicklable_result():
    return Unpicklable()


@task(name="renamed")
def original_name():
    return "renamed"


@task
async def adouble(x):
    await asyncio.sleep(0)
    return 2 * x


@task
async def asleep(seconds):
    await asyncio.sleep(seconds)
    return seconds


@task
async def aboom():
    raise KeyError("missing")


@task
async def aexit():
    sys.exit(3)
