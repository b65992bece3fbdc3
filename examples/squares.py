"""A small flow in the users' guide's spelling: ``@task(mapped=True)``.

Calling a mapped task with a list (or the future of a task that returns one)
maps over it, exactly as ``.map()`` does; ``unmapped(...)`` passes a value
whole. Run it on an embedded fleet::

    fleetflow run examples/squares.py:squares -p n=100

The Airflow DAG in the README runs it as ``examples.squares:squares``.
"""

from __future__ import annotations

from fleetflow import flow, task, unmapped


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task(mapped=True)
def power(x: int, exponent: int = 2) -> int:
    return x**exponent


@task
def total(values: list[int]) -> int:
    return sum(values)


@flow
def squares(n: int = 10):
    return total(power(numbers(n), exponent=unmapped(2)))


@task
def check(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input: {x}")
    return x


@flow
def checked(values: list[int]):
    """Fails with the task's own ValueError when a value is negative."""
    return total(check.map(values))
