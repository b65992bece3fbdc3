"""Flows that move large data, for tests/data (workers import this module by path)."""

from __future__ import annotations

from fleetflow import flow, task


@task
def make_blob(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


@task
def passthrough(blob: bytes) -> bytes:
    return blob


@task
def blob_size(blob: bytes) -> int:
    return len(blob)


@flow
def big_roundtrip(n: int):
    """A payload made by one task, passed whole to the next, returned to the client."""
    return passthrough(make_blob(n))


@flow
def big_parameter(blob: bytes):
    """A large flow parameter, received by a task as it is."""
    return blob_size(blob)


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def noop(x: int) -> int:
    return x


@task
def total(xs: list[int]) -> tuple[int, int]:
    return len(xs), sum(xs)


@flow
def upstream_map(n: int):
    """Map a no-op over an upstream task's n-item list, then add the results up."""
    return total(noop.map(numbers(n)))


@task
def ten_kb(i: int) -> bytes:
    return bytes([i % 251]) * 10_000


@task
def fan_in(blobs: list[bytes]) -> tuple[int, int, list[int]]:
    return len(blobs), sum(len(b) for b in blobs), [b[0] for b in blobs[:5]]


@flow
def wide_fan_in(n: int):
    """n results of 10 KB each, gathered by one task."""
    return fan_in(ten_kb.map(range(n)))


@flow
def map_output(n: int):
    """A map whose n results of 10 KB are the flow's result (read back by the client)."""
    return ten_kb.map(range(n))
