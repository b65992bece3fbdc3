"""Flows the dashboard and metrics tests watch; workers import this file."""

from __future__ import annotations

import asyncio

from fleetflow import flow, task


@task(resources={"cpu": 0.25})
async def fetch(page: int, seconds: float) -> int:
    """A page download: I/O-bound, some pages slower than others."""
    await asyncio.sleep(seconds * (1 + (page % 7) / 3))
    return page


@task(resources={"cpu": 0.25})
async def parse(page: int) -> int:
    await asyncio.sleep(0.01)
    return page * 2


@task
def summarize(values: list) -> dict:
    return {"pages": len(values), "total": sum(values)}


@task(retries=1, retry_delay_seconds=0.1)
def validate(record: int) -> int:
    if record % 9 == 4:
        raise ValueError(f"record {record} has no checksum")
    return record


@flow
def crawl(n: int, seconds: float = 0.2):
    pages = fetch.map(range(n), seconds)
    return summarize(parse.map(pages))


@flow
def audit(n: int):
    return summarize(validate.map(range(n)))


@task(resources={"cpu": 0.01})
async def touch(item: int) -> int:
    return item


@flow
def wide(n: int):
    """A flat map of ``n`` trivial task runs: the dashboard's 100,000-task benchmark."""
    return summarize(touch.map(range(n)))
