"""Batches in the task process pool: members run in order in one process, each on its own terms."""

from __future__ import annotations

import asyncio
import time

import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.serde import dumps, loads
from fleetflow_worker import _codec
from fleetflow_worker._pool import BatchItem, PoolResult, TaskProcessPool


@pytest.fixture
async def pool(sample_tasks_path):
    pool = TaskProcessPool(1, [sample_tasks_path])
    await pool.start()
    yield pool
    pool.kill()
    await pool.close()
    assert pool.pids == []


def error_of(result: PoolResult) -> common_pb2.TaskError:
    assert result.payload[0] == "error", result
    return _codec.error_of(result.payload)


def value_of(result: PoolResult):
    kind, data = result.payload
    assert kind == "value", error_of(result)
    return loads(data)


def _items(name: str, values: list) -> list[BatchItem]:
    return [BatchItem([(name, dumps(v))], False, {"task_run_id": i}) for i, v in enumerate(values)]


async def _run(pool, task, items, *, cancelled=lambda i: False, poke=None, **kw):
    results: dict[int, PoolResult] = {}
    order: list[int] = []

    def on_result(i: int, result: PoolResult) -> None:
        assert i not in results, f"member {i} answered twice"
        results[i] = result
        order.append(i)

    await pool.run_batch(task, items, cancelled=cancelled, on_result=on_result, poke=poke, **kw)
    return results, order


async def test_members_run_in_order_in_one_process_and_report_their_own_time(pool):
    (pid,) = pool.pids
    results, order = await _run(pool, "sample_tasks:double", _items("x", list(range(300))))
    assert order == list(range(300))
    assert [value_of(results[i]) for i in range(300)] == [2 * i for i in range(300)]
    assert all(0 < r.duration_s < 0.5 for r in results.values())
    assert all(r.usage.peak_memory_bytes > 1 << 20 for r in results.values())
    assert pool.pids == [pid], "no process was replaced"


async def test_a_member_past_its_timeout_is_killed_and_the_rest_run_in_a_new_process(pool):
    (pid,) = pool.pids
    started = time.monotonic()
    results, _ = await _run(
        pool, "sample_tasks:sleep_sync", _items("seconds", [0, 0, 30, 0.01, 0]), timeout_s=0.5
    )
    assert time.monotonic() - started < 5.0
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert results[2].timed_out and error_of(results[2]).type.endswith("TaskTimeout")
    assert [value_of(results[i]) for i in (0, 1, 3, 4)] == [0, 0, 0.01, 0]
    assert not any(results[i].timed_out for i in (0, 1, 3, 4))
    async with asyncio.timeout(10):
        while not pool.pids or pool.pids == [pid]:
            await asyncio.sleep(0.05)


async def test_a_member_that_kills_its_process_fails_alone(pool):
    results, _ = await _run(pool, "sample_tasks:double_or_die", _items("x", [1, 2, -7, 3, 4]))
    assert [value_of(results[i]) for i in (0, 1, 3, 4)] == [2, 4, 6, 8]
    assert results[2].infrastructure
    assert error_of(results[2]).type.endswith("TaskProcessDied")


async def test_cancelling_the_running_member_kills_it_and_skips_cancelled_ones(pool):
    cancelled: set[int] = set()
    poke = asyncio.Event()

    async def cancel_soon() -> None:
        await asyncio.sleep(0.3)
        cancelled.update({1, 3})  # 1 runs now (30 s); 3 has not started
        poke.set()

    canceller = asyncio.create_task(cancel_soon())
    started = time.monotonic()
    results, order = await _run(
        pool,
        "sample_tasks:sleep_sync",
        _items("seconds", [0, 30, 0, 0, 0]),
        cancelled=cancelled.__contains__,
        poke=poke,
    )
    await canceller
    assert time.monotonic() - started < 5.0, "the running member was stopped at once"
    assert order == [0, 2, 4]
    assert all(value_of(results[i]) == 0 for i in order)
