"""Tasks and flows of tests/e2e/test_semantics.py (bug classes of other orchestrators)."""

from __future__ import annotations

import threading

from fleetflow import flow, task


class ArrayLike:
    """Like a numpy array: iterates and has a length, but is no registered Sequence."""

    def __init__(self, items):
        self._items = list(items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]


class CodeError(Exception):
    """Its ``__init__`` takes other arguments than it passes on: plain pickling fails."""

    def __init__(self, code, detail):
        super().__init__(f"code={code} detail={detail}")
        self.code = code


class LockedError(Exception):
    """Holds an attribute that does not pickle."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()
        self.attempts = 3


@task
def add(x, y):
    return x + y


@task
def collect(xs):
    return list(xs)


@task
def array_like(n: int):
    return ArrayLike(range(n))


@task
def counting(n: int):
    yield from range(n)


@task
async def async_counting(n: int):
    for i in range(n):
        yield i


@task
def as_dict():
    return {"a": 1}


@task
def listing(n: int):
    return list(range(n))


@flow
def iterables(n: int = 3):
    from_array = add.map(array_like(n), (10 * i for i in range(n)))  # upstream array, generator
    from_generator_task = add.map(counting(n), async_counting(n))  # generator tasks, split
    return collect([collect(from_array), collect(from_generator_task), counting(n)])


@flow
def split_dict():
    return collect(add.map(as_dict(), 1))


@flow
def unequal_upstreams():
    return collect(add.map(listing(2), listing(4)))


@task
def raise_code_error():
    raise CodeError(42, "boom")


@task
def raise_locked_error():
    raise LockedError("held")


@task
def exits(code: int):
    raise SystemExit(code)


@task
def interrupts():
    raise KeyboardInterrupt("from task code")


@flow
def code_error():
    return raise_code_error()


@flow
def locked_error():
    return raise_locked_error()


@flow
def exiting(code: int = 3):
    return exits(code)


@flow
def interrupting():
    return interrupts()


class BadStr(Exception):
    """Its ``__str__`` raises."""

    def __str__(self):
        raise RuntimeError("no text")


@task
def raise_bad_str():
    raise BadStr()


@task
def log_then_fail(name: bytes):
    import os

    import fleetflow

    path = os.fsdecode(name)  # not UTF-8: a lone surrogate, as os.listdir gives it
    fleetflow.get_logger().info(f"reading {path}")
    raise FileNotFoundError(f"no file {path}")


@flow
def bad_str():
    return raise_bad_str()


@flow
def undecodable(name: bytes = b"caf\xe9.txt"):
    return log_then_fail(name)


class Scaler:
    """A task defined in a class body is a method: the instance is its first argument."""

    def __init__(self, k: int) -> None:
        self.k = k

    @task
    def scale(self, x: int) -> int:
        return self.k * x


def _times(n: int):
    @task(name=f"semantics_flows:times_{n}")
    def times(x: int) -> int:
        return n * x

    return times


#: Tasks a factory made into a dict: no module-level name holds them.
TIMES = {n: _times(n) for n in (2, 3)}


@flow
def methods_and_factories(xs: list):
    scaler = Scaler(10)
    by_method = scaler.scale.map(xs)
    by_factory = TIMES[3].map(xs)
    return collect([collect(by_method), collect(by_factory), scaler.scale(1)])


@task(timeout_seconds=0.5)
def too_slow():
    import time

    time.sleep(30)


@flow
def timing_out():
    return too_slow()


@task(resources={"cpu": 0.1})
async def blocks_the_loop(seconds: float) -> float:
    import time

    time.sleep(seconds)  # blocking code in an async def task: holds the worker's loop
    return seconds


@flow
def blocking_async(seconds: float = 3.0):
    return blocks_the_loop(seconds)
