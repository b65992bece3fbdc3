"""Device assignment and warm seats with real task processes (no GPU needed).

A pool given GPU slots exports each GPU attempt's devices as
``CUDA_VISIBLE_DEVICES`` in its process; the sample task reports what it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Mapping

import psutil
import pytest
from fake_nvml import FakeDevice, FakeNvml, install
from fleetflow.serde import dumps, loads
from fleetflow_worker._gpu_usage import GpuSampler
from fleetflow_worker._pool import TaskProcessPool
from fleetflow_worker.errors import TaskProcessDied, TaskTimeout
from fleetflow_worker.gpus import plan_gpus

GiB = 2**30


@pytest.fixture
async def make_pool(sample_tasks_path):
    pools: list[TaskProcessPool] = []

    async def make(size=2, gpu_slots=("0", "1"), **kwargs) -> TaskProcessPool:
        pool = TaskProcessPool(size, [sample_tasks_path], gpu_slots=gpu_slots, **kwargs)
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pids = pool.pids
        await pool.close()
        assert pool.devices.in_use == 0, "devices not given back"
        assert not [p for p in pids if psutil.pid_exists(p) and _alive(p)], "processes left"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def value_of(result):
    assert result.payload[0] == "value", result
    return loads(result.payload[1])


async def run_gpu(pool, gpu=1.0, seconds=0.0, **kwargs):
    return await pool.run(
        "sample_tasks:gpu_visible", [("seconds", dumps(seconds))], False, gpu=gpu, **kwargs
    )


async def test_concurrent_whole_device_attempts_never_share_a_device(make_pool):
    pool = await make_pool(size=4, gpu_slots=("0", "1"))
    results = await asyncio.gather(*(run_gpu(pool, 1.0, 0.4) for _ in range(6)))
    seen = [value_of(r) for r in results]
    assert {devices for devices, *_ in seen} == {"0", "1"}
    for (d1, _, s1, e1), (d2, _, s2, e2) in itertools.combinations(seen, 2):
        if s1 < e2 and s2 < e1:  # ran at the same time
            assert d1 != d2, "two whole-device attempts shared a device"
    assert all(r.devices == (r_seen[0],) for r, r_seen in zip(results, seen, strict=True))
    assert pool.devices.in_use == 0


async def test_fractional_attempts_are_packed_two_per_device(make_pool):
    pool = await make_pool(size=4, gpu_slots=("0", "1"))
    results = await asyncio.gather(*(run_gpu(pool, 0.5, 0.5) for _ in range(4)))
    seen = [value_of(r) for r in results]
    for device in ("0", "1"):
        spans = [(s, e) for d, _, s, e in seen if d == device]
        assert len(spans) == 2  # four halves: two on each device, side by side
    assert max(e for *_, e in seen) - min(s for _, _, s, _ in seen) < 0.5 * 4


async def test_attempts_wait_for_devices_not_only_for_counted_capacity(make_pool):
    pool = await make_pool(size=3, gpu_slots=("0", "1"))
    seen = [value_of(r) for r in await asyncio.gather(*(run_gpu(pool, 0.6, 0.3) for _ in range(3)))]
    spans = sorted((s, e) for *_, s, e in seen)
    # 3 x 0.6 fits the count (1.8 <= 2) but not the devices: one waited for another
    assert any(spans[i][1] <= spans[j][0] + 0.05 for i in range(3) for j in range(3) if i != j)


@pytest.mark.parametrize("end", ["sigkill", "timeout", "memory", "skip", "cancel", "closed"])
async def test_devices_come_back_on_every_end(make_pool, end):
    pool = await make_pool(size=1, gpu_slots=("0",))
    if end == "sigkill":
        result = await pool.run("sample_tasks:kill_self", [], False, gpu=1)
        assert result.infrastructure and TaskProcessDied.__name__ in str(result.payload[1])
        assert result.devices == ("0",)
    elif end == "timeout":
        result = await run_gpu(pool, 1.0, 5.0, timeout_s=0.3)
        assert result.timed_out and TaskTimeout.__name__ in str(result.payload[1])
    elif end == "memory":
        hog = [("mib", dumps(400)), ("hold_s", dumps(3.0))]
        result = await pool.run(
            "sample_tasks:hog", hog, False, memory_request_bytes=50 * 2**20, gpu=1
        )
        assert "MemoryLimitExceeded" in str(result.payload[1]) and result.devices == ("0",)
    elif end == "closed":  # the worker stops: its pool is killed under the attempt
        running = asyncio.ensure_future(run_gpu(pool, 1.0, 5.0))
        await asyncio.sleep(0.5)
        pool.kill()
        result = await asyncio.wait_for(running, 10)
        assert result is None or result.infrastructure
        assert pool.devices.in_use == 0
        return
    elif end == "skip":
        flag = {"skip": False}
        running = asyncio.ensure_future(run_gpu(pool, 1.0, 5.0, skip=lambda: flag["skip"]))
        await asyncio.sleep(0.5)
        assert pool.devices.in_use == 1
        flag["skip"] = True
        assert await asyncio.wait_for(running, 10) is None
    else:
        running = asyncio.ensure_future(run_gpu(pool, 1.0, 5.0))
        await asyncio.sleep(0.5)
        assert pool.devices.in_use == 1
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert pool.devices.in_use == 0
    devices, *_ = value_of(await run_gpu(pool, 1.0))  # the device is usable again
    assert devices == "0"


async def test_a_batch_holds_one_allocation_for_all_its_members(make_pool):
    from fleetflow_worker._pool import BatchItem

    pool = await make_pool(size=2, gpu_slots=("0", "1"))
    results: dict[int, object] = {}
    items = [BatchItem([("seconds", dumps(0.05))], False, {}) for _ in range(4)]
    await pool.run_batch(
        "sample_tasks:gpu_visible",
        items,
        cancelled=lambda i: False,
        on_result=lambda i, r: results.__setitem__(i, r),
        gpu=1.0,
    )
    seen = [value_of(results[i]) for i in range(4)]
    assert {s[0] for s in seen} == {"0"} and len({s[1] for s in seen}) == 1
    assert all(results[i].devices == ("0",) for i in range(4))


async def test_cpu_attempts_on_a_gpu_worker_see_no_devices(make_pool):
    pool = await make_pool(size=1, gpu_slots=("0",))
    result = await pool.run("sample_tasks:gpu_visible", [], False)  # gpu=0
    assert value_of(result)[0] == "" and result.devices == ()


async def test_a_worker_without_gpus_leaves_the_environment_alone(make_pool):
    pool = await make_pool(size=1, gpu_slots=())
    assert value_of(await pool.run("sample_tasks:gpu_visible", [], False))[0] == os.environ.get(
        "CUDA_VISIBLE_DEVICES"
    )


async def test_a_process_bound_to_other_devices_is_replaced(make_pool):
    pool = await make_pool(size=1, gpu_slots=("0", "1"))
    first = value_of(await run_gpu(pool, 2.0))
    assert first[0] == "0,1"
    second = value_of(await run_gpu(pool, 1.0))
    assert second[0] == "0" and second[1] != first[1], "CUDA read the first binding: new process"
    third = value_of(await run_gpu(pool, 1.0))
    assert third[:2] == second[:2], "same devices: same warm process"


# --------------------------------------------------------------- warm seats


async def warm(pool, label, gpu=0.0):
    return value_of(
        await pool.run("sample_tasks:warm_count", [("label", dumps(label))], False, gpu=gpu)
    )


async def test_the_second_attempt_of_a_task_sees_the_state_the_first_kept(make_pool):
    pool = await make_pool(size=2, gpu_slots=())
    pid1, calls1, _ = await warm(pool, "a")
    pid2, calls2, _ = await warm(pool, "b")
    assert (pid2, calls1, calls2) == (pid1, 1, 2)


async def test_another_task_takes_a_cold_seat_rather_than_a_warm_one(make_pool):
    pool = await make_pool(size=2, gpu_slots=())
    pid_warm, *_ = await warm(pool, "a")
    other = value_of(await pool.run("sample_tasks:getpid", [], False))
    assert other != pid_warm, "the other task took the cold seat"
    pid_again, calls, _ = await warm(pool, "b")
    assert (pid_again, calls) == (pid_warm, 2)


async def test_gpu_tasks_return_to_the_seat_holding_their_devices(make_pool):
    pool = await make_pool(size=2, gpu_slots=("0", "1"))
    pid1, calls1, _ = await warm(pool, "a", gpu=1)
    cpu_pid = value_of(await pool.run("sample_tasks:getpid", [], False))
    pid2, calls2, _ = await warm(pool, "b", gpu=1)
    assert cpu_pid != pid1, "the CPU attempt did not evict the GPU task's process"
    assert (pid2, calls1, calls2) == (pid1, 1, 2)


async def test_another_gpu_task_takes_other_devices_than_a_warm_process_holds(make_pool):
    pool = await make_pool(size=3, gpu_slots=("0", "1"))
    pid_a, *_ = await warm(pool, "a", gpu=1)
    b_devices, pid_b, *_ = value_of(await run_gpu(pool, 1.0))
    assert b_devices == "1" and pid_b != pid_a, "b left a's device and process alone"
    pid_again, calls, _ = await warm(pool, "b", gpu=1)
    assert (pid_again, calls) == (pid_a, 2)


async def test_a_killed_process_loses_its_kept_state(make_pool):
    pool = await make_pool(size=1, gpu_slots=())
    pid1, *_ = await warm(pool, "a")
    await pool.run("sample_tasks:kill_self", [], False)
    pid2, calls, _ = await warm(pool, "b")
    assert pid2 != pid1 and calls == 1


# ------------------------------------------------------ measured GPU use


class PoolPids(Mapping):
    """``{pid: value}`` for every live process of ``pool`` (and ``others``), read when used."""

    def __init__(self, pool, value, others=None):
        self.pool, self.value, self.others = pool, value, others or {}

    def _all(self):
        return {**{pid: self.value for pid in self.pool.pids}, **self.others}

    def __getitem__(self, pid):
        return self._all()[pid]

    def __iter__(self):
        return iter(self._all())

    def __len__(self):
        return len(self._all())


async def test_gpu_use_is_measured_with_a_fake_nvml(make_pool, monkeypatch):
    fake = install(monkeypatch, FakeNvml([FakeDevice(), FakeDevice()]))
    plan = plan_gpus(environ={})
    sampler = GpuSampler(plan.devices)
    assert sampler.open()
    try:
        pool = await make_pool(size=2, gpu_slots=plan.slots, gpu_sampler=sampler)
        # Whichever process an attempt runs in (GPU processes start for their
        # devices), it "uses" both devices; pid 1 is another process: not counted.
        fake.devices[0].processes = PoolPids(pool, 3 * GiB, {1: 7 * GiB})
        fake.devices[0].utilisation = PoolPids(pool, 40)
        fake.devices[1].processes = PoolPids(pool, 5 * GiB)
        result = await run_gpu(pool, 1.0, 0.35)
        assert result.devices == ("0",)  # the lowest free device
        assert result.usage.peak_gpu_memory_bytes == 3 * GiB
        assert result.usage.gpu_utilization_percent == 40
        both = await run_gpu(pool, 2.0)  # short: measured by the sample at its result
        assert both.devices == ("0", "1")
        assert both.usage.peak_gpu_memory_bytes == 8 * GiB
        assert both.usage.gpu_utilization_percent == 20  # 40 % and no samples: 0 %
        cpu = await pool.run("sample_tasks:getpid", [], False)
        assert cpu.usage.peak_gpu_memory_bytes == 0 and cpu.usage.gpu_utilization_percent is None
    finally:
        sampler.close()
    assert fake.inits == fake.shutdowns


# ------------------------------------------------------- through a worker


async def test_a_worker_assigns_devices_reports_them_and_logs_them(sample_tasks, sample_tasks_path):
    import structlog
    from fake_worker_service import FakeCoordinator, make_lease, start_server
    from fleetflow_worker import Worker, WorkerSettings

    fake = FakeCoordinator()
    server, port = await start_server(fake)
    settings = WorkerSettings(
        coordinator=f"127.0.0.1:{port}",
        cpu=2,
        memory=1e9,
        resources={"gpu": 2},  # no NVML here: devices 0 and 1 as the operator says
        lease_wait_s=0.2,
        backoff_cap_s=0.2,
    )
    worker = Worker(settings, sample_tasks, [sample_tasks_path])
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            running = asyncio.create_task(worker.run())
            for i in range(1, 4):
                lease = make_lease(i, "sample_tasks:gpu_visible", seconds=0.3)
                lease.resources.amounts["gpu"] = 1
                fake.leases.put_nowait(lease)
            outcomes = await fake.wait_outcomes(3)
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(running, 15)
        await server.stop(0)
    assert dict(fake.registrations[0].capacity.amounts)["gpu"] == 2
    for i in range(1, 4):
        seen = loads(outcomes[i, 1].value)[0]
        assert list(outcomes[i, 1].gpu_devices) == [seen] and seen in ("0", "1")
    lines = [e for e in logs if e["event"] == "task_run_finished"]
    assert sorted(e["gpus"] for e in lines) == sorted(
        loads(outcomes[i, 1].value)[0] for i in range(1, 4)
    )
    assert worker.pool.devices.in_use == 0


async def test_async_attempts_hold_their_devices_too(sample_tasks, sample_tasks_path):
    import time

    from fake_worker_service import FakeCoordinator, make_lease, start_server
    from fleetflow_worker import Worker, WorkerSettings

    fake = FakeCoordinator()
    server, port = await start_server(fake)
    settings = WorkerSettings(
        coordinator=f"127.0.0.1:{port}",
        cpu=2,
        memory=1e9,
        resources={"gpu": 1},
        lease_wait_s=0.2,
        backoff_cap_s=0.2,
    )
    worker = Worker(settings, sample_tasks, [sample_tasks_path])
    running = asyncio.create_task(worker.run())
    try:
        await fake.wait_for(lambda: fake.registrations)
        first = make_lease(1, "sample_tasks:asleep", seconds=0.6)
        first.resources.amounts["gpu"] = 1
        second = make_lease(2, "sample_tasks:gpu_visible")
        second.resources.amounts["gpu"] = 1
        put = time.monotonic()
        fake.leases.put_nowait(first)
        await asyncio.sleep(0.1)
        fake.leases.put_nowait(second)
        outcomes = await fake.wait_outcomes(2)
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(running, 15)
        await server.stop(0)
    assert list(outcomes[1, 1].gpu_devices) == ["0"] == list(outcomes[2, 1].gpu_devices)
    devices, _, started, _ = loads(outcomes[2, 1].value)
    assert devices == "0" and started - put >= 0.5, "the plain attempt waited for the device"
    assert worker.pool.devices.in_use == 0


# ------------------------------------------------------ review: never wait for ever


@pytest.mark.parametrize(("slots", "gpu"), [((), 0.5), (("0",), 2.0), (("0", "1"), 2.5)])
async def test_a_request_the_devices_can_never_hold_fails_rather_than_waits(make_pool, slots, gpu):
    pool = await make_pool(size=1, gpu_slots=slots)
    with pytest.raises(RuntimeError, match="cannot fit this worker's"):
        await asyncio.wait_for(run_gpu(pool, gpu), 10)  # waited for ever before
    with pytest.raises(RuntimeError, match="cannot fit this worker's"):
        await asyncio.wait_for(pool.hold_devices(gpu), 10)  # async def attempts too
    assert pool.devices.in_use == 0 and len(pool._free) == 1  # nothing held


# ------------------------------------------------------ review: odd NVML answers


async def test_an_odd_nvml_answer_mid_run_never_fails_the_attempt(make_pool, monkeypatch):
    from types import SimpleNamespace

    fake = install(monkeypatch, FakeNvml([FakeDevice()]))
    plan = plan_gpus(environ={})
    sampler = GpuSampler(plan.devices)
    assert sampler.open()
    try:
        pool = await make_pool(size=1, gpu_slots=plan.slots, gpu_sampler=sampler)
        fake.devices[0].processes = PoolPids(pool, 2 * GiB)

        def odd(handle, since):  # a sample NVML should never give (no timestamp)
            return [
                SimpleNamespace(pid=p, smUtil=None, memUtil=0, timeStamp=None) for p in pool.pids
            ]

        monkeypatch.setattr(fake, "nvmlDeviceGetProcessUtilization", odd)
        # sampled while it runs (0.1 s) and at its result: neither may fail it
        pids = set()
        for seconds in (0.35, 0.0):
            result = await asyncio.wait_for(run_gpu(pool, 1.0, seconds), 20)
            assert result is not None and value_of(result)[0] == "0"
            assert result.devices == ("0",)
            pids.add(value_of(result)[1])
        assert pool.devices.in_use == 0
        assert len(pids) == 1  # the same process ran both: no kill, no leak
    finally:
        sampler.close()


async def test_a_failure_while_watching_an_attempt_kills_its_process(make_pool, monkeypatch):
    """The seat must never go back with its process still running the attempt."""
    import fleetflow_worker._batch as batch

    pool = await make_pool(size=1, gpu_slots=("0",))
    real = batch.ProcessMeter.sample
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # mid-run, while the attempt sleeps
            raise RuntimeError("watching failed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(batch.ProcessMeter, "sample", flaky)
    [first_pid] = pool.pids
    with pytest.raises(RuntimeError, match="watching failed"):
        await asyncio.wait_for(run_gpu(pool, 1.0, 8.0), 20)
    assert pool.devices.in_use == 0
    asked = asyncio.get_running_loop().time()
    result = await asyncio.wait_for(run_gpu(pool, 1.0, 0.0), 20)
    _devices, pid, started, _ended = value_of(result)
    # Before: the seat went back with its process still sleeping in the first
    # attempt, and the next one queued behind it down the same pipe.
    assert pid != first_pid, "the next attempt went to the process still running the last"
    assert started - asked < 6.0


@pytest.mark.parametrize("end", ["timeout", "closed"])
async def test_a_killed_attempt_takes_the_processes_it_started_with_it(make_pool, tmp_path, end):
    """Its devices go to the next attempt: a child it left would still use them."""
    pool = await make_pool(size=1, gpu_slots=("0",))
    pid_file = tmp_path / "child.pid"
    args = [("pid_file", dumps(str(pid_file)))]
    running = asyncio.ensure_future(
        pool.run("sample_tasks:spawn_and_hang", args, False, gpu=1, timeout_s=1.5)
    )
    if end == "closed":  # the worker stops: its pool is killed under the attempt
        for _ in range(100):  # bounded: 10 s
            if pid_file.exists() and pid_file.read_text():
                break
            await asyncio.sleep(0.1)
        pool.kill()
    result = await asyncio.wait_for(running, 30)
    if end == "timeout":
        assert result.timed_out, result.payload[1]
    assert pool.devices.in_use == 0
    child = int(pid_file.read_text())
    for _ in range(50):  # bounded: 5 s
        if not (psutil.pid_exists(child) and _alive(child)):
            break
        await asyncio.sleep(0.1)
    assert not _alive(child), "the attempt's child outlived it, on the device given back"


async def test_a_cpu_attempt_takes_a_new_seat_rather_than_evict_warm_gpu_processes(make_pool):
    """Every free seat is bound to devices: a surplus seat, not a warm process killed."""
    pool = await make_pool(size=2, max_size=4, gpu_slots=("0", "1"))
    pid_a, *_ = await warm(pool, "a", gpu=1)  # warm_count on device 0
    devices_b, pid_b, *_ = value_of(await run_gpu(pool, 1.0))  # gpu_visible on device 1
    assert devices_b == "1" and pid_b != pid_a
    cpu_pid = value_of(await pool.run("sample_tasks:getpid", [], False))
    assert cpu_pid not in (pid_a, pid_b)
    pid_again, calls, _ = await warm(pool, "b", gpu=1)
    assert (pid_again, calls) == (pid_a, 2), "the CPU attempt evicted a warm GPU process"
    assert value_of(await run_gpu(pool, 1.0))[1] == pid_b


async def test_async_gpu_attempts_run_on_a_thread_executor_worker(sample_tasks, sample_tasks_path):
    """The thread executor assigns no devices; async def attempts asked it for some."""
    from fake_worker_service import FakeCoordinator, make_lease, start_server
    from fleetflow_worker import Worker, WorkerSettings

    fake = FakeCoordinator()
    server, port = await start_server(fake)
    settings = WorkerSettings(
        coordinator=f"127.0.0.1:{port}",
        cpu=2,
        memory=1e9,
        resources={"gpu": 1},
        executor="thread",
        lease_wait_s=0.2,
        backoff_cap_s=0.2,
    )
    worker = Worker(settings, sample_tasks, [sample_tasks_path])
    running = asyncio.create_task(worker.run())
    try:
        await fake.wait_for(lambda: fake.registrations)
        lease = make_lease(1, "sample_tasks:asleep", seconds=0.1)
        lease.resources.amounts["gpu"] = 1
        fake.leases.put_nowait(lease)
        outcomes = await fake.wait_outcomes(1)
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(running, 15)
        await server.stop(0)
    outcome = outcomes[1, 1]
    # Before: AttributeError ('ThreadExecutor' has no 'hold_devices'), an
    # infrastructure failure on every attempt.
    assert not outcome.infrastructure and outcome.HasField("value"), outcome


async def test_gpu_processes_start_with_their_devices_before_user_code_runs(tmp_path):
    """A module that initialises CUDA at import must still see only its devices."""
    from pathlib import Path

    module = str(Path(__file__).with_name("cuda_at_import.py"))
    pool = TaskProcessPool(2, [module], gpu_slots=("0", "1"))
    await pool.start()
    try:
        results = await asyncio.gather(
            *(pool.run("cuda_at_import:devices_cuda_sees", [], False, gpu=1) for _ in range(2))
        )
        seen = [value_of(r) for r in results]
        # Before: CUDA latched the worker's own list (every device) at import,
        # so both "exclusive" attempts saw every GPU and would both use cuda:0.
        assert sorted(latched for latched, _ in seen) == ["0", "1"], seen
        assert all(latched == now for latched, now in seen)
        cpu = value_of(await pool.run("cuda_at_import:devices_cuda_sees", [], False))
        assert cpu[1] == ""  # a CPU attempt on a GPU worker is told no device
    finally:
        await pool.close()
    assert pool.devices.in_use == 0
