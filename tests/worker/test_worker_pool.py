"""The task process pool: real forkserver processes, no coordinator."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.serde import dumps, loads
from fleetflow_worker import _codec
from fleetflow_worker._pool import BatchItem, PoolStartError, TaskProcessPool
from fleetflow_worker.errors import MemoryLimitExceeded, TaskProcessDied, TaskTimeout

MIB = 1 << 20


@pytest.fixture
async def pool(sample_tasks_path):
    pool = TaskProcessPool(2, [sample_tasks_path])
    await pool.start()
    yield pool
    pids = pool.pids
    pool.kill()
    await pool.close()
    assert pool.pids == []
    assert not [p for p in pids if psutil.pid_exists(p) and _not_zombie(p)], "processes left"


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def error_of(result) -> common_pb2.TaskError:
    assert result.payload[0] == "error", result
    return _codec.error_of(result.payload)


def value_of(result):
    kind, data = result.payload
    assert kind == "value", error_of(result)
    return loads(data)


async def wait_for_pids(pool: TaskProcessPool, n: int, timeout_s: float = 10.0) -> list[int]:
    """Wait (bounded) until the pool has ``n`` live processes again."""
    async with asyncio.timeout(timeout_s):
        while len(pool.pids) != n:
            await asyncio.sleep(0.05)
    return pool.pids


async def test_runs_tasks_by_name_in_task_processes(pool):
    results = await asyncio.gather(
        *(pool.run("sample_tasks:double", [("x", dumps(i))], False) for i in range(6))
    )
    assert [value_of(r) for r in results] == [0, 2, 4, 6, 8, 10]
    assert not any(r.timed_out or r.infrastructure for r in results)


async def test_timeout_kills_the_process_and_a_replacement_takes_the_next_task(pool, tmp_path):
    ledger = tmp_path / "ledger"
    before = set(pool.pids)
    started = time.monotonic()
    result = await pool.run(
        "sample_tasks:sleep_then_mark",
        [("path", dumps(str(ledger))), ("seconds", dumps(30))],
        False,
        timeout_s=0.5,
    )
    assert time.monotonic() - started < 2.0
    assert result.timed_out and not result.infrastructure
    error = error_of(result)
    assert error.type == "fleetflow_worker.errors.TaskTimeout"
    assert error.message == "task sample_tasks:sleep_then_mark exceeded its timeout of 0.5 s"
    assert isinstance(loads(error.pickled), TaskTimeout)
    killed = int(ledger.read_text().split()[1])
    await asyncio.sleep(0.5)
    assert ledger.read_text().split() == ["start", str(killed)], "nothing after the sleep ran"
    assert killed in before
    assert not (psutil.pid_exists(killed) and _not_zombie(killed)), "killed, and reaped"
    after = set(await wait_for_pids(pool, 2))
    assert killed not in after and len(after & before) == 1
    pids = {value_of(await pool.run("sample_tasks:getpid", [], False)) for _ in range(4)}
    assert pids <= after


async def test_an_attempt_within_its_timeout_is_untouched(pool):
    result = await pool.run(
        "sample_tasks:sleep_sync", [("seconds", dumps(0.2))], False, timeout_s=5
    )
    assert value_of(result) == 0.2 and not result.timed_out


async def test_cancelling_the_caller_kills_only_that_process(pool, tmp_path):
    ledger = tmp_path / "ledger"
    args = [("path", dumps(str(ledger))), ("seconds", dumps(30))]
    victim = asyncio.ensure_future(pool.run("sample_tasks:sleep_then_mark", args, False))
    other = asyncio.ensure_future(
        pool.run("sample_tasks:sleep_sync", [("seconds", dumps(1.0))], False)
    )
    async with asyncio.timeout(10):
        while not ledger.exists():
            await asyncio.sleep(0.05)
    pid = int(ledger.read_text().split()[1])
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    async with asyncio.timeout(5):
        while psutil.pid_exists(pid) and _not_zombie(pid):
            await asyncio.sleep(0.05)
    assert value_of(await other) == 1.0, "the other attempt carries on"
    await wait_for_pids(pool, 2)
    assert "after" not in ledger.read_text() and "finally" not in ledger.read_text()


async def test_cancelling_a_waiting_attempt_never_starts_it(sample_tasks_path, tmp_path):
    pool = TaskProcessPool(1, [sample_tasks_path])
    try:
        busy = asyncio.ensure_future(
            pool.run("sample_tasks:sleep_sync", [("seconds", dumps(0.5))], False)
        )
        ledger = tmp_path / "ledger"
        args = [("path", dumps(str(ledger))), ("seconds", dumps(0))]
        waiting = asyncio.ensure_future(pool.run("sample_tasks:sleep_then_mark", args, False))
        await asyncio.sleep(0.1)
        waiting.cancel()
        assert value_of(await busy) == 0.5
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not ledger.exists()
    finally:
        await pool.close()


async def test_skip_is_asked_before_starting(pool):
    assert (
        await pool.run("sample_tasks:double", [("x", dumps(1))], False, skip=lambda: True) is None
    )


async def test_a_dead_process_fails_only_its_attempt_and_is_replaced(pool):
    slow = asyncio.ensure_future(
        pool.run("sample_tasks:sleep_sync", [("seconds", dumps(1.0))], False)
    )
    await asyncio.sleep(0.2)
    died = await pool.run("sample_tasks:die", [("code", dumps(3))], False)
    assert died.infrastructure and not died.timed_out
    assert error_of(died).message == "task process died (exit code 3)"
    assert loads(error_of(died).pickled).exitcode == 3
    assert value_of(await slow) == 1.0, "the other process was not touched"
    assert value_of(await pool.run("sample_tasks:double", [("x", dumps(2))], False)) == 4


async def test_the_exit_code_is_read_reliably(pool):
    for _ in range(5):
        result = await pool.run("sample_tasks:die", [("code", dumps(5))], False)
        assert isinstance(loads(error_of(result).pickled), TaskProcessDied)
        assert error_of(result).message == "task process died (exit code 5)"


async def test_memory_limit_kills_a_task_past_its_request(pool):
    started = time.monotonic()
    result = await pool.run(
        "sample_tasks:hog",
        [("mib", dumps(300)), ("hold_s", dumps(10))],
        False,
        memory_request_bytes=100 * MIB,
    )
    assert time.monotonic() - started < 5
    assert not result.infrastructure and not result.timed_out
    error = error_of(result)
    exc = loads(error.pickled)
    assert isinstance(exc, MemoryLimitExceeded) and isinstance(exc, MemoryError)
    assert exc.limit_bytes == 100 * MIB * 1.2 + 50 * MIB
    assert exc.limit_bytes < exc.peak_bytes < 400 * MIB
    assert error.message.startswith(
        "task sample_tasks:hog exceeded its memory request of 100 MiB (peak "
    )
    assert result.usage.peak_memory_bytes >= exc.peak_bytes
    # The pool carries on, in a new process.
    assert value_of(await pool.run("sample_tasks:double", [("x", dumps(5))], False)) == 10


async def test_a_task_within_its_memory_request_is_untouched(pool):
    result = await pool.run(
        "sample_tasks:hog",
        [("mib", dumps(100)), ("hold_s", dumps(0.3))],
        False,
        memory_request_bytes=200 * MIB,
    )
    assert value_of(result) == 100


async def test_usage_reports_peak_memory_and_cpu_time(pool):
    result = await pool.run("sample_tasks:hog", [("mib", dumps(200)), ("hold_s", dumps(0))], False)
    assert value_of(result) == 200
    assert 150 * MIB < result.usage.peak_memory_bytes < 400 * MIB
    # The peak is per attempt: the next small attempt in the same process is small again.
    small = [await pool.run("sample_tasks:double", [("x", dumps(1))], False) for _ in range(2)]
    assert min(r.usage.peak_memory_bytes for r in small) < 150 * MIB
    busy = await pool.run("sample_tasks:burn_cpu", [("seconds", dumps(0.5))], False)
    assert 0.4 <= busy.usage.cpu_seconds < 1.5


async def test_usage_of_a_killed_attempt_is_measured_too(pool):
    result = await pool.run(
        "sample_tasks:hog", [("mib", dumps(120)), ("hold_s", dumps(30))], False, timeout_s=1.0
    )
    assert result.timed_out
    assert 100 * MIB < result.usage.peak_memory_bytes < 400 * MIB


async def test_task_processes_run_at_a_lower_priority(sample_tasks_path):
    pool = TaskProcessPool(1, [sample_tasks_path], nice=7)
    try:
        await pool.start()
        (pid,) = pool.pids
        assert psutil.Process(pid).nice() == os.nice(0) + 7
    finally:
        await pool.close()


async def test_kill_ends_running_attempts_and_refuses_new_ones(pool):
    slow = asyncio.ensure_future(
        pool.run("sample_tasks:sleep_sync", [("seconds", dumps(30))], False)
    )
    await asyncio.sleep(0.3)
    pool.kill()
    result = await asyncio.wait_for(slow, 5)
    assert result.infrastructure
    assert "SIGKILL" in error_of(result).message
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run("sample_tasks:double", [("x", dumps(1))], False)


async def test_start_fails_when_the_processes_cannot_import_the_modules(tmp_path):
    flaky = tmp_path / "flaky_tasks.py"
    flaky.write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise ImportError('only in task processes')\n"
    )
    pool = TaskProcessPool(1, [str(flaky)])
    try:
        with pytest.raises(PoolStartError, match="only in task processes"):
            await pool.start()
    finally:
        await pool.close()
    assert pool.pids == []


async def test_surplus_attempts_get_their_own_process_up_to_max_size(sample_tasks_path):
    pool = TaskProcessPool(1, [sample_tasks_path], max_size=3)
    try:
        await pool.start()
        (warm,) = pool.pids
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                pool.run("sample_tasks:sleep_sync", [("seconds", dumps(2.0))], False)
                for _ in range(3)
            )
        )
        # 2 s side by side; one after another would take 6 s (3 s of room for a loaded machine)
        assert time.monotonic() - started < 5.0, "side by side (one after another: 6 s)"
        assert [value_of(r) for r in results] == [2.0] * 3
        assert await wait_for_pids(pool, 1) == [warm], "surplus processes are closed"
    finally:
        await pool.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_messages_bigger_than_the_pipe_cross_it_whole(sample_tasks_path, loop_kind):
    """The loop writes a request the pipe cannot take at once as it drains, and
    reads a result that arrives in many pieces; small ones around it are unharmed.
    uvloop too: it makes the pipe's descriptor non-blocking for its reads."""
    import uvloop

    async def main() -> None:
        pool = TaskProcessPool(2, [sample_tasks_path])
        await pool.start()
        try:
            big = os.urandom(6 * MIB)
            results = await asyncio.gather(
                pool.run("sample_tasks:double", [("x", dumps(big))], False),
                pool.run("sample_tasks:double", [("x", dumps(21))], False),
            )
            assert value_of(results[0]) == big * 2
            assert value_of(results[1]) == 42
            got: dict[int, object] = {}
            items = [BatchItem([("x", dumps(v))], False, {}) for v in (big, 1, big[:999])]
            await pool.run_batch(
                "sample_tasks:double",
                items,
                cancelled=lambda i: False,
                on_result=lambda i, r: got.__setitem__(i, value_of(r)),
            )
            assert got == {0: big * 2, 1: 2, 2: big[:999] * 2}
        finally:
            pool.kill()
            await pool.close()

    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())
