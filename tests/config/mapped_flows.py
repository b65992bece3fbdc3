"""Flows written as the users' guide spells mapping: @task(mapped=True)."""

from __future__ import annotations

from fleetflow import flow, task, unmapped


@task(mapped=True)
def scale(x: int, factor: int = 1) -> int:
    return x * factor


@task(mapped=True)
def shift(x: int, by: int) -> int:
    return x + by


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def summary(shifted: list[int], literal: list[int]) -> dict:
    return {"total": sum(shifted), "items": shifted, "literal": literal}


@flow
def guide_style(n: int = 5):
    scaled = scale(numbers(n), factor=unmapped(10))  # maps over an upstream list
    shifted = shift(scaled, by=1)  # maps again, item by item
    literal = scale([1, 2, 3], factor=2)  # maps over a literal list
    return summary(shifted, literal)  # fan-in of two maps
