"""Tasks and flows of the large-data benchmark (benchmarks/large_data.py), fleetflow and Dask."""

from __future__ import annotations

import numpy as np
from fleetflow import flow, task


def make_array(n_bytes: int):
    """A float64 array of ``n_bytes`` bytes (random, so nothing compresses it away)."""
    return np.random.default_rng(7).random(n_bytes // 8)


def array_sum(a) -> float:
    return float(a.sum())


def numbers(n: int) -> list[int]:
    return list(range(n))


def noop(x: int) -> int:
    return x


def total(xs: list[int]) -> tuple[int, int]:
    return len(xs), sum(xs)


make_array_t = task(make_array, name="make_array")
array_sum_t = task(array_sum, name="array_sum")
numbers_t = task(numbers, name="numbers")
noop_t = task(noop, name="noop")
total_t = task(total, name="total")


@flow
def big_array(n_bytes: int):
    """B1: one task makes an array, the next one reads it whole."""
    return array_sum_t(make_array_t(n_bytes))


@flow
def upstream_map(n: int):
    """B2: a no-op mapped over an upstream task's n-item list, then gathered."""
    return total_t(noop_t.map(numbers_t(n)))


@flow
def warm():
    return total_t(noop_t.map([1, 2]))
