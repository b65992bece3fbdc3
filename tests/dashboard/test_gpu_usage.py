"""GPU use per attempt at the coordinator: devices for inspect, sketches, advice."""

from __future__ import annotations

import pickle

import pytest
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import worker_service_pb2
from fleetflow_coordinator.core import NodeSpec, Scheduler
from fleetflow_coordinator.gpu_usage import AttemptGpuBook
from fleetflow_coordinator.usage import TaskUsageStats, UsageBook, advise, suggest_gpu

from .drive import Clock, fail, map_node, ok, submit
from .test_usage import _Context

MiB = 2**20
GiB = 2**30


def gpu_outcome(grant, *, devices=("0",), peak=2 * GiB, util=30.0, value=True):
    outcome = worker_service_pb2.Outcome(
        task_run_id=grant.task_run.id,
        attempt=grant.attempt,
        cpu_seconds=0.5,
        peak_memory_bytes=300 * MiB,
        duration_seconds=2.0,
        gpu_devices=list(devices),
        peak_gpu_memory_bytes=peak,
    )
    if util is not None:
        outcome.gpu_utilization_percent = util
    if value:
        outcome.value = pickle.dumps(1)
    else:
        outcome.error.message = "CUDA out of memory"
    return outcome


@pytest.mark.parametrize(("p95", "want"), [(0, 0.25), (15, 0.25), (20, 0.25), (30, 0.5), (70, 1.0)])
def test_gpu_suggestion_is_a_quarter_step_share(p95, want):
    assert suggest_gpu(p95) == want


def gpu_stats(requested, *, util, peak=GiB, duration_s=2.0, n=10) -> TaskUsageStats:
    s = TaskUsageStats("embed", 0, requested)
    for _ in range(n):
        s.add(0.5, 100 * MiB, duration_s)
        s.add_gpu(peak, util)
    return s


def test_gpu_advice_for_a_whole_device_the_attempts_barely_use():
    (advice,) = advise(gpu_stats({"gpu": 1}, util=20))
    assert advice.resource == "gpu" and advice.suggested == 0.25
    assert advice.message == (
        "embed requests gpu 1, p95 utilisation 20%: consider gpu=0.25 "
        "(attempts then share a device)"
    )
    assert advise(gpu_stats({"gpu": 1}, util=80)) == []
    assert advise(gpu_stats({"gpu": 1}, util=5, duration_s=0.1)) == [], "too short to judge"
    assert advise(gpu_stats({"gpu": 0.5}, util=5)) == [], "already a share"


def test_gpu_memory_advice_is_like_memory_advice():
    (advice,) = advise(gpu_stats({"gpu": 1, "gpu_memory": 40 * GiB}, util=90, peak=3 * GiB))
    assert advice.resource == "gpu_memory" and advice.suggested == 4 * GiB
    (raise_it,) = advise(gpu_stats({"gpu": 1, "gpu_memory": 2 * GiB}, util=90, peak=3 * GiB))
    assert "p95 used 3GiB" in raise_it.message


def test_the_book_keeps_devices_of_every_accepted_attempt_and_folds_successes():
    clock = Clock()
    core = Scheduler()
    core.register_worker(
        "w1", {"cpu": 8.0, "memory": 8.0 * GiB, "gpu": 2.0}, frozenset({"embed"}), clock()
    )
    base = map_node("embed", 3)
    submit(core, clock, [NodeSpec("embed", True, base.args, {"cpu": 1.0, "gpu": 1.0})])
    grants = core.lease("w1", 3, clock())
    assert len(grants) == 2  # two devices' worth
    book = UsageBook()
    outcomes = [
        gpu_outcome(grants[0], devices=("1",), util=10.0),
        gpu_outcome(grants[1], devices=("0",), util=None, value=False),
    ]
    acks = core.report("w1", [ok(grants[0]), fail(grants[1])], clock())
    book.record_outcomes(core, outcomes, acks, clock())
    first = book.attempt_gpus.get(grants[0].task_run.id, grants[0].attempt)
    second = book.attempt_gpus.get(grants[1].task_run.id, grants[1].attempt)
    assert first.devices == ("1",) and first.gpu_utilization_percent == 10.0
    assert second.devices == ("0",) and second.gpu_utilization_percent is None
    (row,) = book.flow("fr1")
    assert row.gpu_measured == 1, "only the measured success is folded in"
    assert row.peak_gpu_memory_bytes.quantile(0.95) == pytest.approx(2 * GiB, rel=0.01)
    assert book.by_task["embed"].gpu_measured == 1
    assert [a.resource for a in advise(row)][0] == "gpu"
    view = row.view()
    assert view["gpu_measured_attempts"] == 1 and view["gpu_utilization_percent"]["p95"] > 0


def test_the_attempt_book_is_bounded():
    book = AttemptGpuBook(max_attempts=3)
    for i in range(5):
        book.record(worker_service_pb2.Outcome(task_run_id=i, attempt=1, gpu_devices=["0"]))
    assert len(book) == 3 and book.get(0, 1) is None and book.get(4, 1).devices == ("0",)


async def test_get_task_run_shows_each_attempts_devices():
    from fleetflow_coordinator.runtime import Runtime
    from fleetflow_coordinator.servicers import CoordinatorServicer, WorkerServicer
    from fleetflow_coordinator.settings import Settings

    clock = Clock(1000.0)
    runtime = Runtime(Settings(), clock=clock)
    runtime.start()
    try:
        core = runtime.core
        core.register_worker("w1", {"cpu": 4.0, "gpu": 4.0}, frozenset({"p"}), clock())
        base = map_node("p", 1)
        submit(core, clock, [NodeSpec("p", True, base.args, {"gpu": 2.0})])
        (grant,) = core.lease("w1", 1, clock())
        request = worker_service_pb2.ReportOutcomesRequest(
            worker_id="w1", outcomes=[gpu_outcome(grant, devices=("0", "3"), util=55.0)]
        )
        await WorkerServicer(runtime).ReportOutcomes(request, _Context())
        info = await CoordinatorServicer(runtime).GetTaskRun(
            cs.GetTaskRunRequest(task_run_id=grant.task_run.id), _Context()
        )
    finally:
        await runtime.stop()
    (attempt,) = info.attempts
    assert list(attempt.gpu_devices) == ["0", "3"]
    assert attempt.peak_gpu_memory_bytes == 2 * GiB and attempt.gpu_utilization_percent == 55.0
