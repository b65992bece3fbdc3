"""The Worker against a scripted in-process WorkerService (no real coordinator)."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog
from fake_worker_service import FakeCoordinator, make_lease, start_server
from fleetflow.api.v1 import worker_service_pb2 as pb
from fleetflow.serde import loads
from fleetflow_worker import Worker, WorkerSettings
from fleetflow_worker.errors import (
    MemoryLimitExceeded,
    TaskNotRegistered,
    TaskProcessDied,
    TaskTimeout,
    WorkerShutDown,
)

MIB = 1 << 20


@pytest.fixture
async def coordinator():
    fake = FakeCoordinator()
    server, port = await start_server(fake)
    fake.port, fake.server = port, server
    yield fake
    await server.stop(0)


@pytest.fixture
async def make_worker(coordinator, sample_tasks, sample_tasks_path):
    running: list[tuple[Worker, asyncio.Task]] = []

    def make(tasks=None, **overrides) -> Worker:
        options = dict(
            coordinator=f"127.0.0.1:{coordinator.port}",
            worker_id="w-test",
            cpu=2,
            memory=1e9,
            lease_wait_s=0.2,
            drain_grace_s=5,
            flush_timeout_s=2,
            backoff_cap_s=0.2,
        )
        options.update(overrides)
        worker = Worker(WorkerSettings(**options), tasks or sample_tasks, [sample_tasks_path])
        worker.run_task = asyncio.create_task(worker.run())
        running.append((worker, worker.run_task))
        return worker

    yield make
    for worker, task in running:
        worker.stop(force=True)
        await asyncio.wait_for(task, 15)
        worker.table.validate()


def value_of(outcome: pb.Outcome):
    assert outcome.WhichOneof("result") == "value", outcome
    return loads(outcome.value)


def error_of(outcome: pb.Outcome) -> BaseException:
    assert outcome.WhichOneof("result") == "error", outcome
    return loads(outcome.error.pickled)


def held(fake: FakeCoordinator) -> set[tuple[int, int]]:
    if not fake.heartbeats:
        return set()
    return {(h.task_run_id, h.attempt) for h in fake.heartbeats[-1].running}


async def test_registers_with_capacity_and_task_names(coordinator, make_worker, sample_tasks):
    import os
    import socket

    make_worker(resources={"gpu": 1.0})
    await coordinator.wait_for(lambda: coordinator.registrations)
    request = coordinator.registrations[0]
    assert request.worker_id == "w-test"
    assert dict(request.capacity.amounts) == {"cpu": 2.0, "memory": 1e9, "gpu": 1.0}
    assert list(request.task_names) == sorted(sample_tasks)
    assert (request.hostname, request.pid) == (socket.gethostname(), os.getpid())
    # Each task's code version, so the coordinator leases only what this code runs.
    assert dict(request.task_fingerprints) == {n: t.fingerprint for n, t in sample_tasks.items()}
    assert all(len(v) == 16 for v in request.task_fingerprints.values())
    assert not request.any_version


async def test_runs_async_and_process_pool_tasks(coordinator, make_worker):
    make_worker()
    for lease in (
        make_lease(1, "sample_tasks:adouble", x=2),
        make_lease(2, "sample_tasks:double", x=3),
        make_lease(3, "sample_tasks:split_range", split=True, n=3),
        make_lease(4, "renamed"),
    ):
        coordinator.leases.put_nowait(lease)
    outcomes = await coordinator.wait_outcomes(4)
    assert value_of(outcomes[1, 1]) == 4
    assert value_of(outcomes[2, 1]) == 6
    assert [loads(b) for b in outcomes[3, 1].items.items] == [0, 1, 2]
    assert value_of(outcomes[4, 1]) == "renamed"


async def test_task_failures_are_reported_as_errors(coordinator, make_worker):
    worker = make_worker()
    for lease in (
        make_lease(1, "sample_tasks:boom", x=1),
        make_lease(2, "sample_tasks:as_dict", split=True, n=2),
        make_lease(3, "sample_tasks:aboom"),
        make_lease(4, "sample_tasks:aexit"),
        make_lease(5, "sample_tasks:exit_task", code=2),
        make_lease(6, "no_such_task"),
    ):
        coordinator.leases.put_nowait(lease)
    outcomes = await coordinator.wait_outcomes(6)
    assert isinstance(error_of(outcomes[1, 1]), ValueError)
    assert outcomes[2, 1].error.message == (
        "task sample_tasks:as_dict returned dict; a downstream map "
        "needs a list, tuple or other iterable (str, bytes, dicts and sets are not split)"
    )
    assert isinstance(error_of(outcomes[3, 1]), KeyError)
    assert isinstance(error_of(outcomes[4, 1]), SystemExit)
    assert isinstance(error_of(outcomes[5, 1]), SystemExit)
    assert isinstance(error_of(outcomes[6, 1]), TaskNotRegistered)
    assert [o.infrastructure for _, o in sorted(outcomes.items())] == [False] * 5 + [True]
    assert not worker.run_task.done(), "sys.exit() in a task must not stop the worker"


async def test_timeouts(coordinator, make_worker):
    worker = make_worker()
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:asleep", timeout_s=0.1, seconds=30))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:spin", timeout_s=0.2, seconds=30))
    coordinator.leases.put_nowait(
        make_lease(3, "sample_tasks:sleep_sync", timeout_s=0.3, seconds=30)
    )
    outcomes = await coordinator.wait_outcomes(3)
    assert outcomes[1, 1].error.message == "task sample_tasks:asleep exceeded its timeout of 0.1 s"
    assert outcomes[2, 1].error.message == "task sample_tasks:spin exceeded its timeout of 0.2 s"
    assert (
        outcomes[3, 1].error.message == "task sample_tasks:sleep_sync exceeded its timeout of 0.3 s"
    )
    for key in ((1, 1), (2, 1), (3, 1)):
        outcome = outcomes[key]
        assert outcome.timed_out and not outcome.infrastructure
        assert outcome.error.type == "fleetflow_worker.errors.TaskTimeout"
        assert isinstance(error_of(outcome), TaskTimeout)
    assert "in asleep" in outcomes[1, 1].error.traceback  # where the coroutine was
    assert worker.table.running == 0
    # The worker carries on, in fresh task processes.
    coordinator.leases.put_nowait(make_lease(4, "sample_tasks:double", x=2))
    assert value_of((await coordinator.wait_outcomes(4))[4, 1]) == 4


async def test_a_dead_task_process_is_an_infrastructure_failure(coordinator, make_worker):
    make_worker()
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:die", code=3))
    outcome = (await coordinator.wait_outcomes(1))[1, 1]
    assert outcome.infrastructure
    assert outcome.error.message == "task process died (exit code 3)"
    assert isinstance(error_of(outcome), TaskProcessDied)
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:double", x=5))
    assert value_of((await coordinator.wait_outcomes(2))[2, 1]) == 10


async def test_heartbeats_list_held_attempts_and_cancel_async_ones(coordinator, make_worker):
    worker = make_worker()
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:asleep", seconds=30))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:adouble", attempt=3, x=1))
    await coordinator.wait_for(lambda: (1, 1) in held(coordinator))
    hb = coordinator.heartbeats[-1]
    assert hb.worker_id == "w-test" and hb.memory_available > 0
    coordinator.cancel = [pb.HeldTaskRun(task_run_id=1, attempt=1)]
    await coordinator.wait_for(lambda: (1, 1) not in held(coordinator))
    assert worker.table.running == 0
    assert list(coordinator.outcomes) == [(2, 3)], "a cancelled attempt reports nothing"


async def test_cancelled_pool_attempt_is_killed_and_frees_its_slot(
    coordinator, make_worker, tmp_path
):
    worker = make_worker(cpu=1)
    ledger = tmp_path / "ledger"
    coordinator.leases.put_nowait(
        make_lease(1, "sample_tasks:sleep_then_mark", path=str(ledger), seconds=30)
    )
    await coordinator.wait_for(lambda: (1, 1) in held(coordinator))
    async with asyncio.timeout(10):
        while not ledger.exists():
            await asyncio.sleep(0.05)
    pid = int(ledger.read_text().split()[1])
    coordinator.cancel = [pb.HeldTaskRun(task_run_id=1, attempt=1)]
    await coordinator.wait_for(lambda: not coordinator.cancel)
    async with asyncio.timeout(2):
        while worker.table.running:
            await asyncio.sleep(0.02)
    await coordinator.wait_for(lambda: (1, 1) not in held(coordinator))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:getpid"))
    new_pid = value_of((await coordinator.wait_outcomes(1))[2, 1])
    assert new_pid != pid, "the one task process was replaced"
    assert list(coordinator.outcomes) == [(2, 1)], "a cancelled attempt reports nothing"
    assert ledger.read_text().split() == ["start", str(pid)]


async def test_memory_limit_from_the_lease_kills_only_that_task(coordinator, make_worker):
    worker = make_worker()
    coordinator.leases.put_nowait(
        make_lease(1, "sample_tasks:hog", memory=100 * MIB, mib=300, hold_s=10)
    )
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:asleep", seconds=1.0))
    outcome = (await coordinator.wait_outcomes(1, timeout_s=10))[1, 1]
    assert not outcome.infrastructure and not outcome.timed_out
    error = error_of(outcome)
    assert isinstance(error, MemoryLimitExceeded)
    assert "exceeded its memory request of 100 MiB (peak" in outcome.error.message
    assert outcome.peak_memory_bytes > 170 * MIB
    assert value_of((await coordinator.wait_outcomes(2))[2, 1]) == 1.0
    assert not worker.run_task.done()


async def test_outcomes_carry_measured_usage(coordinator, make_worker):
    make_worker()
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:hog", mib=200))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:burn_cpu", seconds=0.3))
    coordinator.leases.put_nowait(make_lease(3, "sample_tasks:adouble", x=1))
    outcomes = await coordinator.wait_outcomes(3)
    assert 150 * MIB < outcomes[1, 1].peak_memory_bytes < 400 * MIB
    assert 0.2 <= outcomes[2, 1].cpu_seconds < 1.5
    assert outcomes[3, 1].peak_memory_bytes == outcomes[3, 1].cpu_seconds == 0, "not measured"


async def test_registers_again_when_the_coordinator_forgets_it(coordinator, make_worker):
    make_worker()
    await coordinator.wait_for(lambda: coordinator.registrations)
    coordinator.forget_workers()
    await coordinator.wait_for(lambda: len(coordinator.registrations) >= 2)
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:adouble", x=1))
    await coordinator.wait_outcomes(1)


async def test_failed_reports_are_resent(coordinator, make_worker):
    make_worker()
    coordinator.fail_reports = 3
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:adouble", x=4))
    outcomes = await coordinator.wait_outcomes(1)
    assert value_of(outcomes[1, 1]) == 8
    assert coordinator.report_calls == 4


async def test_survives_a_coordinator_restart(coordinator, make_worker, sample_tasks):
    worker = make_worker()
    await coordinator.wait_for(lambda: coordinator.registrations)
    # "restart": a new coordinator with no memory, on the same port, after an outage
    server_port = coordinator.port
    await coordinator.server.stop(0)
    await asyncio.sleep(0.5)
    fresh = FakeCoordinator()
    server, _ = await start_server(fresh, server_port)
    try:
        await fresh.wait_for(lambda: fresh.registrations, timeout_s=10)
        fresh.leases.put_nowait(make_lease(7, "sample_tasks:double", x=7))
        assert value_of((await fresh.wait_outcomes(1))[7, 1]) == 14
        assert not worker.run_task.done()
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(worker.run_task, 10)
        await server.stop(0)


async def test_never_leases_more_than_max_concurrency(coordinator, make_worker):
    make_worker(max_concurrency=2)
    for i in range(5):
        coordinator.leases.put_nowait(make_lease(i, "sample_tasks:asleep", seconds=0.2))
    await coordinator.wait_outcomes(5)
    asked = [r.max_task_runs for r in coordinator.lease_requests]
    assert max(asked) == 2 and min(asked) >= 1


async def test_the_long_poll_and_the_piggybacked_lease_share_the_free_slots(
    coordinator, make_worker, sample_tasks
):
    # Issue 11: both asks used to take every free slot, so a coordinator that
    # honours both ran 4 attempts at once on a worker with max_concurrency=2.
    counted = sample_tasks["sample_tasks:counted"].fn.__globals__["COUNTED"]
    counted.update(now=0, peak=0)
    coordinator.piggyback = True
    worker = make_worker(max_concurrency=2, lease_wait_s=5)
    waves, per_wave = 4, 10
    for wave in range(waves):
        # Each wave finds the worker idle, its long poll waiting for work; the
        # rest of the wave goes out in ReportOutcomes answers.
        polls = len(coordinator.lease_requests)
        await coordinator.wait_for(lambda n=polls: len(coordinator.lease_requests) > n)
        for i in range(per_wave):
            coordinator.leases.put_nowait(
                make_lease(wave * per_wave + i, "sample_tasks:counted", seconds=0.02)
            )
        await coordinator.wait_outcomes((wave + 1) * per_wave, timeout_s=30)
    assert coordinator.piggybacked >= waves  # both asks were served, every wave
    assert len(coordinator.lease_requests) >= waves  # each wave began with a long poll
    assert counted["peak"] == 2, counted  # both slots used, never more
    table = worker.table  # idle: the long poll holds what is free, nothing leaked
    assert table.running == 0 and table.free_slots + table.reserved == 2


async def test_drain_lets_running_attempts_finish(coordinator, make_worker):
    worker = make_worker()
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:asleep", seconds=0.5))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:sleep_sync", seconds=0.5))
    await coordinator.wait_for(lambda: {(1, 1), (2, 1)} <= held(coordinator))
    worker.stop()
    await asyncio.wait_for(worker.run_task, 10)
    assert value_of(coordinator.outcomes[1, 1]) == 0.5
    assert value_of(coordinator.outcomes[2, 1]) == 0.5
    requests = len(coordinator.lease_requests)
    await asyncio.sleep(0.3)
    assert len(coordinator.lease_requests) == requests, "no leases asked for after stop"


async def test_drain_grace_over_hands_running_attempts_back(coordinator, make_worker):
    worker = make_worker(drain_grace_s=0.3)
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:asleep", seconds=30))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:sleep_sync", seconds=30))
    await coordinator.wait_for(lambda: {(1, 1), (2, 1)} <= held(coordinator))
    pids = worker.pool.pids
    started = time.monotonic()
    worker.stop()
    await asyncio.wait_for(worker.run_task, 10)
    assert time.monotonic() - started < 5
    assert sorted(coordinator.released) == [(1, 1), (2, 1)]
    assert coordinator.outcomes == {}, "handed back, not reported"
    assert worker.pool.pids == [] and len(pids) == 2


async def test_drain_falls_back_to_worker_shut_down_on_an_older_coordinator(
    coordinator, make_worker
):
    coordinator.release_unimplemented = True
    worker = make_worker(drain_grace_s=0.3)
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:asleep", seconds=30))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:sleep_sync", seconds=30))
    await coordinator.wait_for(lambda: {(1, 1), (2, 1)} <= held(coordinator))
    worker.stop()
    await asyncio.wait_for(worker.run_task, 10)
    assert coordinator.released == []
    for key in ((1, 1), (2, 1)):
        outcome = coordinator.outcomes[key]
        assert outcome.infrastructure
        assert isinstance(error_of(outcome), WorkerShutDown)


async def test_stop_while_the_coordinator_is_unreachable(sample_tasks, sample_tasks_path):
    settings = WorkerSettings(coordinator="127.0.0.1:1", cpu=1, memory=1e9, backoff_cap_s=0.1)
    worker = Worker(
        settings,
        {"sample_tasks:adouble": sample_tasks["sample_tasks:adouble"]},
        [sample_tasks_path],
    )
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    worker.stop()
    await asyncio.wait_for(task, 5)


async def test_one_summary_line_per_attempt(coordinator, make_worker):
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        make_worker()
        coordinator.leases.put_nowait(make_lease(11, "sample_tasks:adouble", attempt=2, x=1))
        coordinator.leases.put_nowait(make_lease(12, "sample_tasks:boom", x=1))
        await coordinator.wait_outcomes(2)
    finished = sorted(
        (e for e in logs if e["event"] == "task_run_finished"), key=lambda e: e["task_run_id"]
    )
    assert [(e["task_run_id"], e["outcome"]) for e in finished] == [
        (11, "completed"),
        (12, "failed"),
    ]
    first = finished[0]
    assert first["attempt"] == 2 and first["flow_run_id"] == "flow-1"
    assert first["worker_id"] == "w-test" and first["task_name"] == "sample_tasks:adouble"
    assert first["duration_s"] >= 0
    assert finished[1]["error_type"] == "builtins.ValueError"


def test_a_worker_needs_tasks():
    with pytest.raises(ValueError, match="at least one task"):
        Worker(WorkerSettings(), {}, [])


async def test_a_forced_stop_skips_the_grace_period(coordinator, make_worker):
    worker = make_worker(drain_grace_s=60)
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:asleep", seconds=30))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:sleep_sync", seconds=30))
    await coordinator.wait_for(lambda: {(1, 1), (2, 1)} <= held(coordinator))
    started = time.monotonic()
    worker.stop()
    await asyncio.sleep(0.2)
    assert not worker.run_task.done()
    worker.stop(force=True)
    await asyncio.wait_for(worker.run_task, 10)
    assert time.monotonic() - started < 5
    assert sorted(coordinator.released) == [(1, 1), (2, 1)]
    assert coordinator.outcomes == {}


async def test_registering_again_lists_the_attempts_still_held(coordinator, make_worker):
    make_worker()
    coordinator.leases.put_nowait(make_lease(5, "sample_tasks:asleep", attempt=2, seconds=30))
    await coordinator.wait_for(lambda: (5, 2) in held(coordinator))
    assert list(coordinator.registrations[0].running) == []
    coordinator.forget_workers()
    await coordinator.wait_for(lambda: len(coordinator.registrations) >= 2)
    again = coordinator.registrations[-1]
    assert [(h.task_run_id, h.attempt) for h in again.running] == [(5, 2)]


async def test_retry_directives_reach_the_outcome(coordinator, make_worker, tmp_path):
    make_worker()
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:ask_retry", delay=4.5))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:give_up"))
    coordinator.leases.put_nowait(make_lease(3, "sample_tasks:aask_retry", delay=1.5))
    outcomes = await coordinator.wait_outcomes(3)
    assert outcomes[1, 1].retry_requested and outcomes[1, 1].retry_delay_seconds == 4.5
    assert outcomes[2, 1].non_retryable and not outcomes[2, 1].retry_requested
    assert outcomes[3, 1].retry_requested and outcomes[3, 1].retry_delay_seconds == 1.5


async def test_lease_batches_run_in_order_in_one_slot_each(coordinator, make_worker):
    """Consecutive leases with one batch id share a slot; every member reports on its own."""
    pool_members = [make_lease(10 + i, "sample_tasks:double", x=i) for i in range(6)]
    async_members = [make_lease(20 + i, "sample_tasks:adouble", x=i) for i in range(4)]
    for lease in pool_members:
        lease.batch = 1
    for lease in async_members:
        lease.batch = 2
    for lease in [*pool_members, *async_members, make_lease(30, "sample_tasks:double", x=50)]:
        coordinator.leases.put_nowait(lease)  # all in the worker's first LeaseTasks answer
    worker = make_worker()
    outcomes = await coordinator.wait_outcomes(11)
    assert [value_of(outcomes[10 + i, 1]) for i in range(6)] == [2 * i for i in range(6)]
    assert [value_of(outcomes[20 + i, 1]) for i in range(4)] == [2 * i for i in range(4)]
    assert value_of(outcomes[30, 1]) == 100
    # Pool members are timed by their task process: the task code alone, well under 1 s.
    assert all(0 < outcomes[10 + i, 1].duration_seconds < 1 for i in range(6))
    assert coordinator.lease_requests[0].max_batch == worker.settings.max_batch > 1
    worker.table.validate()
