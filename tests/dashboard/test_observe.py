"""The dashboard's views and metrics over a pure Scheduler: cheap with 100,000 task runs."""

from __future__ import annotations

import time
from types import SimpleNamespace

import structlog.testing
from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.metrics import Metrics
from fleetflow_coordinator.observe import (
    FOLD_BUDGET,
    MAX_FAILURES,
    TOP_SLOWEST,
    AttemptLog,
    Observer,
    recent_rate,
    series,
    shape_label,
)

from .drive import Clock, fail, fan_in, map_node, ok, submit


class NoIteration(list):
    """A node's children that may be indexed and measured, never walked."""

    def __iter__(self):
        raise AssertionError("a snapshot walked a node's task runs")


class NoIterationDict(dict):
    def __iter__(self):
        raise AssertionError("a snapshot walked every task run")

    def values(self):
        raise AssertionError("a snapshot walked every task run")

    def items(self):
        raise AssertionError("a snapshot walked every task run")


def _fold_all(observer: Observer) -> list[int]:
    slices = []
    for _ in range(100):  # bounded: 100 slices of FOLD_BUDGET events
        folded = observer.catch_up()
        if not folded:
            return slices
        slices.append(folded)
    raise AssertionError("folding never caught up")


def test_a_100k_map_is_one_row_and_snapshots_never_walk_task_runs():
    clock = Clock()
    core = Scheduler(max_leases_per_worker=100_000)  # one worker holds the whole map
    core.register_worker("w1", {"cpu": 200_000.0}, frozenset({"parse", "total"}), clock())
    flow = submit(core, clock, [map_node("parse", 100_000), fan_in("total", 0)])
    clock.now += 1
    grants = core.lease("w1", 100_000, clock())
    assert len(grants) == 100_000
    clock.now += 2
    core.report("w1", [ok(g) for g in grants[:60_000]], clock())
    core.report("w1", [fail(g, f"bad {i}") for i, g in enumerate(grants[60_000:60_100])], clock())

    metrics = Metrics()
    metrics.bind_state(SimpleNamespace(core=core, clock=clock))
    observer = Observer(lambda: core, clock, sink=metrics)
    slices = _fold_all(observer)
    assert max(slices) <= FOLD_BUDGET and len(slices) > 1  # folded in bounded slices

    for node in flow.nodes:
        node.children = NoIteration(node.children)
    core.task_runs = NoIterationDict(core.task_runs)
    started = time.perf_counter()
    for _ in range(10):
        data = observer.overview()
    per_snapshot_s = (time.perf_counter() - started) / 10
    assert per_snapshot_s < 0.05, per_snapshot_s

    detail = data["flow"]
    assert data["selected"] == flow.id and detail["state"] == "RUNNING"
    parse, total = detail["node_counts"]
    assert parse["task_name"] == "parse" and parse["map"] and parse["total"] == 100_000
    assert parse["counts"]["completed"] == 60_000 and parse["counts"]["failed"] == 100
    assert parse["counts"]["running"] == 39_900 and parse["finished"] == 60_100
    # The fan-in can now never run: it ended UPSTREAM_FAILED without expanding,
    # and counts as its one task run in that state (issue 17, item 5).
    assert total["total"] == 1 and total["ended_unexpanded"] == "upstream_failed"
    assert total["counts"]["upstream_failed"] == 1 and total["finished"] == 1
    assert detail["total"] == 100_001 and detail["finished"] == 60_101
    assert detail["failed"] == 100 and detail["upstream_failed"] == 1
    # 100 task failures; the fan-in's end is no failure of its own.
    assert len(detail["failures"]) == MAX_FAILURES and detail["failures_total"] == 100
    newest = detail["failures"][0]
    assert newest["message"] == "bad 99" and "ValueError: bad 99" in newest["traceback"]
    assert newest["worker_id"] == "w1"
    assert len(detail["slowest"]) == TOP_SLOWEST
    assert all(s["duration_s"] == 2.0 for s in detail["slowest"])
    assert detail["throughput"]["completed"][-1] + sum(detail["throughput"]["completed"]) > 0
    assert sum(detail["throughput"]["completed"]) == 60_000
    assert sum(detail["throughput"]["failed"]) == 100

    samples = metrics.registry
    assert samples.get_sample_value("fleetflow_task_runs", {"state": "RUNNING"}) == 39_900
    assert samples.get_sample_value("fleetflow_task_runs", {"state": "COMPLETED"}) == 60_000
    assert (
        samples.get_sample_value(
            "fleetflow_task_run_duration_seconds_count", {"task": "parse", "outcome": "completed"}
        )
        == 60_000
    )
    assert (
        samples.get_sample_value("fleetflow_events_published_total", {"kind": "TASK_RUN_STARTED"})
        == 100_000
    )


def test_slowest_attempts_queue_wait_retries_and_lost_workers():
    clock = Clock()
    core = Scheduler(lease_ttl_s=5.0)
    flow = submit(core, clock, [map_node("t", 3, retries=1)])
    metrics = Metrics()
    metrics.bind_state(SimpleNamespace(core=core, clock=clock))
    observer = Observer(lambda: core, clock, sink=metrics)
    clock.now += 4  # queued for 4 s before any worker exists
    core.register_worker("w1", {"cpu": 3.0}, frozenset({"t"}), clock())
    a, b, c = core.lease("w1", 3, clock())
    clock.now += 1
    core.report("w1", [ok(a)], clock())
    clock.now += 2
    core.report("w1", [fail(b, "flaky")], clock())  # retried: attempt 2 follows
    observer.catch_up()
    detail = observer.overview(flow.id)["flow"]
    assert [s["duration_s"] for s in detail["slowest"]] == [3.0, 1.0]
    assert detail["slowest"][0]["outcome"] == "retrying"
    assert [r["index"] for r in detail["running_longest"]] == [2]
    assert detail["running_longest"][0]["running_s"] == 3.0
    assert detail["retries"] == 1 and detail["failures"][0]["kind"] == "TASK_RUN_RETRYING"

    clock.now += 10  # w1 goes silent: its leases expire
    core.tick(clock())
    observer.catch_up()
    detail = observer.overview(flow.id)["flow"]
    assert detail["lost_attempts"] == 1
    assert detail["failures"][0]["kind"] == "TASK_RUN_LEASE_EXPIRED"
    wait = metrics.registry.get_sample_value
    assert wait("fleetflow_task_run_queue_wait_seconds_count", {"task": "t"}) == 3
    assert wait("fleetflow_task_run_queue_wait_seconds_sum", {"task": "t"}) == 12.0
    assert wait("fleetflow_workers_connected") == 0


def test_an_unschedulable_warning_lasts_only_while_no_worker_fits():
    clock = Clock()
    core = Scheduler()
    flow = submit(core, clock, [map_node("big", 2, cpu=8.0)])
    observer = Observer(lambda: core, clock)
    observer.catch_up()
    warnings = observer.overview()["flow"]["unschedulable"]
    assert warnings == [{"node": 0, "message": "no connected worker offers task 'big'"}]
    core.register_worker("small", {"cpu": 2.0}, frozenset({"big"}), clock())
    assert observer.overview()["flow"]["unschedulable"]  # still cannot fit
    core.register_worker("large", {"cpu": 16.0}, frozenset({"big"}), clock())
    assert observer.overview(flow.id)["flow"]["unschedulable"] == []


def test_the_newest_running_flow_run_is_shown_unless_one_is_asked_for():
    clock = Clock()
    core = Scheduler()
    core.register_worker("w", {"cpu": 4.0}, frozenset({"t"}), clock())
    first = submit(core, clock, [map_node("t", 1)], "first")
    core.report("w", [ok(g) for g in core.lease("w", 10, clock())], clock())
    assert first.terminal
    second = submit(core, clock, [map_node("t", 2)], "second")
    submit(core, clock, [map_node("t", 0)], "empty")  # ends at once
    observer = Observer(lambda: core, clock)
    assert observer.overview()["selected"] == second.id
    assert observer.overview("first")["flow"]["state"] == "COMPLETED"
    assert observer.overview("nope")["flow"] is None
    assert [f["id"] for f in observer.overview()["flows"]] == ["empty", "second", "first"]


def test_series_folds_seconds_into_windows():
    buckets = {100: [2, 0], 101: [3, 1], 150: [5, 0], 300: [1, 1]}
    s = series(buckets, 100.0, 159.9, points=120)
    assert s["step_s"] == 1 and len(s["completed"]) == 60
    assert s["completed"][0] == 2 and s["completed"][1] == 3 and s["failed"][1] == 1
    assert s["completed"][50] == 5
    wide = series(buckets, 100.0, 339.0, points=120)
    assert wide["step_s"] == 2 and len(wide["completed"]) == 120
    assert sum(wide["completed"]) == 11 and sum(wide["failed"]) == 2


def test_shape_labels_are_readable():
    assert shape_label({"memory": 256 * 2**20, "cpu": 1.0}) == "cpu=1,memory=256Mi"
    assert shape_label({"cpu": 0.25, "gpu": 1}) == "cpu=0.25,gpu=1"
    assert shape_label({}) == ""


def test_one_log_line_per_ended_attempt_carries_the_ids():
    clock = Clock()
    core = Scheduler()
    core.register_worker("w1", {"cpu": 4.0}, frozenset({"t"}), clock())
    flow = submit(core, clock, [map_node("t", 3, retries=1)])
    a, b, c = core.lease("w1", 3, clock())
    clock.now += 0.5
    core.report("w1", [ok(a), ok(b), fail(c, "nope")], clock())
    retry = core.lease("w1", 3, clock())  # no delay configured: due at once
    core.tick(clock())
    retry = retry or core.lease("w1", 3, clock())
    core.report("w1", [ok(g) for g in retry], clock())
    observer = Observer(lambda: core, clock, sink=AttemptLog(Metrics()))
    with structlog.testing.capture_logs() as logs:
        observer.catch_up()
    lines = [e for e in logs if e["event"] == "task_run_attempt_ended"]
    assert len(lines) == 4  # three first attempts and one retry
    for line in lines:
        assert line["flow_run_id"] == flow.id and line["worker_id"] == "w1"
        assert line["task_run_id"] and line["attempt"] in (1, 2)
    failed = [e for e in lines if e["outcome"] == "retrying"]
    assert len(failed) == 1 and failed[0]["log_level"] == "info"
    assert failed[0]["error_type"] == "builtins.ValueError"
    assert {e["log_level"] for e in lines if e["outcome"] == "completed"} == {"debug"}


def test_recent_rate_counts_whole_seconds_since_the_start():
    buckets = {100: [5, 0], 101: [4, 1], 109: [10, 0], 110: [99, 0]}
    assert recent_rate(buckets, 110.5) == 2.0  # seconds 100..109: 20 in 10 s
    assert recent_rate(buckets, 110.5, since=108.2) == 5.0  # seconds 108..109
    assert recent_rate({}, 110.5) == 0.0


def test_folding_runs_whole_gives_what_folding_each_event_gives():
    """The fold takes stretches of alike events whole (``EventLog.spans``); same digest."""
    clock = Clock()
    core = Scheduler()
    core.register_worker("w1", {"cpu": 16.0}, frozenset({"t"}), clock())
    flow = submit(core, clock, [map_node("t", 300, retries=1)])
    for round_ in range(60):
        clock.now += 0.25
        grants = core.lease("w1", 16, clock())
        if not grants:
            core.tick(clock())
            continue
        clock.now += 0.5 + 0.01 * round_
        core.report("w1", [fail(g) if g.task_run.id % 17 == 0 else ok(g) for g in grants], clock())
    assert flow.events._runs  # the log holds runs, so stretches are folded whole
    whole_metrics, each_metrics = Metrics(), Metrics()
    observer = Observer(lambda: core, clock, sink=whole_metrics)
    _fold_all(observer)
    each = type(observer.digest(flow.id))(flow.id)
    for event in flow.events:  # the reference: one record at a time
        each_metrics.event(event.kind)
        each._fold_one(event, each_metrics, None)
    each.cursor = len(flow.events)
    whole = observer.digest(flow.id)
    for name in whole.__slots__:
        assert getattr(whole, name) == getattr(each, name), name
    assert whole_metrics.events_by_kind == each_metrics.events_by_kind
    for histogram in ("task_duration", "queue_wait"):
        assert getattr(whole_metrics, histogram)._series == getattr(each_metrics, histogram)._series


def test_a_lease_batch_counts_as_one_running_slot_on_its_worker():
    # Issue 17: a 1-CPU worker showed "139 running" for the members of one batch.
    from fleetflow_coordinator.observe import worker_view

    clock = Clock()
    core = Scheduler()
    core.register_worker("w1", {"cpu": 1.0}, frozenset({"t"}), clock())
    flow = submit(core, clock, [map_node("t", 50)])
    flow.nodes[0].mean_duration_s = 0.001  # reported short: leases come in batches
    grants = core.lease("w1", 1, clock(), max_batch=50)
    assert len(grants) > 1
    view = worker_view(core.workers["w1"], clock())
    assert view["running"] == 1 and view["leased"] == len(grants)
