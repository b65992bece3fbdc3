"""The forkserver process pool: real pool processes, no coordinator."""

from __future__ import annotations

import asyncio

import pytest
from fleetflow.serde import dumps, loads
from fleetflow_worker._pool import PoolStartError, TaskProcessPool
from fleetflow_worker.errors import TaskProcessDied


@pytest.fixture
async def pool(sample_tasks_path):
    pool = TaskProcessPool(2, [sample_tasks_path])
    await pool.start()
    yield pool
    pool.kill()
    await pool.close()


async def test_runs_tasks_by_name_in_pool_processes(pool):
    results = await asyncio.gather(
        *(pool.run("double", [("x", dumps(i))], False) for i in range(6))
    )
    assert [loads(data) for _, data in results] == [0, 2, 4, 6, 8, 10]


async def test_a_dead_process_fails_its_attempt_and_the_pool_recovers(pool):
    with pytest.raises(TaskProcessDied) as info:
        await pool.run("die", [("code", dumps(3))], False)
    assert info.value.exitcode == 3
    assert str(info.value) == "task process died (exit code 3)"
    kind, data = await pool.run("double", [("x", dumps(2))], False)
    assert loads(data) == 4


async def test_attempts_in_the_pool_when_it_breaks_all_fail(pool):
    slow = asyncio.ensure_future(pool.run("sleep_sync", [("seconds", dumps(5))], False))
    await asyncio.sleep(0.3)
    with pytest.raises(TaskProcessDied):
        await pool.run("die", [("code", dumps(9))], False)
    with pytest.raises(TaskProcessDied) as info:
        await slow
    assert info.value.exitcode == 9


async def test_skip_is_asked_before_starting(pool):
    assert await pool.run("double", [("x", dumps(1))], False, skip=lambda: True) is None


async def test_kill_fails_running_attempts_and_refuses_new_ones(pool):
    slow = asyncio.ensure_future(pool.run("sleep_sync", [("seconds", dumps(30))], False))
    await asyncio.sleep(0.3)
    pool.kill()
    with pytest.raises(TaskProcessDied) as info:
        await slow
    assert info.value.exitcode == -9
    assert "SIGKILL" in str(info.value)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run("double", [("x", dumps(1))], False)


async def test_start_fails_when_the_pool_cannot_import_the_modules(tmp_path):
    flaky = tmp_path / "flaky_tasks.py"
    flaky.write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise ImportError('only in pool processes')\n"
    )
    pool = TaskProcessPool(1, [str(flaky)])
    try:
        with pytest.raises(PoolStartError, match="failed to start"):
            await pool.start()
    finally:
        await pool.close()


async def test_the_exit_code_is_read_reliably(pool):
    for _ in range(5):
        with pytest.raises(TaskProcessDied) as info:
            await pool.run("die", [("code", dumps(5))], False)
        assert info.value.exitcode == 5
