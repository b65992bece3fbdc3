"""Measured usage (quantile sketches, right-sizing advice) and time in state, over a pure core."""

from __future__ import annotations

import math
import pickle

import pytest
from fleetflow.api.v1 import worker_service_pb2
from fleetflow_coordinator.core import Arg, ArgKind, NodeSpec, Outcome, Scheduler
from fleetflow_coordinator.observe import Observer
from fleetflow_coordinator.usage import (
    MAX_BINS,
    QuantileSketch,
    TaskUsageStats,
    UsageBook,
    advise,
    format_bytes,
    suggest_cpu,
    suggest_memory,
)
from fleetflow_coordinator.usage_sketch import DEFAULT_GAMMA_LOG, bin_values
from hypothesis import given, settings
from hypothesis import strategies as st

from .drive import Clock, fail, map_node, ok, submit

MiB = 2**20
GiB = 2**30


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(round(q * len(ordered), 9)) - 1)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e12)),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_sketch_quantiles_are_within_one_percent_of_the_nearest_rank(values, q):
    sketch = QuantileSketch()
    for value in values:
        sketch.add(value)
    want = exact(values, q)
    got = sketch.quantile(q)
    assert abs(got - want) <= 0.01 * want + 1e-12, (got, want)
    assert sketch.count == len(values) and sketch.hi == max(values)


def test_sketch_memory_is_bounded_and_high_quantiles_stay_exact_enough():
    sketch = QuantileSketch()
    values = [10 ** (i / 100_000 * 18 - 6) for i in range(100_000)]  # 1e-6 .. 1e12
    for value in values:
        sketch.add(value)
    assert len(sketch.bins) <= MAX_BINS + 64
    # 512 bins of 2 % span 4.4 decades: the top ones keep full accuracy.
    for q in (0.8, 0.95, 0.99, 1.0):
        assert sketch.quantile(q) == pytest.approx(exact(values, q), rel=0.011)


def test_nearest_rank_of_few_values():
    sketch = QuantileSketch()
    assert sketch.quantile(0.95) == 0.0
    sketch.add(100.0)
    sketch.add(200.0)
    assert sketch.quantile(0.5) == pytest.approx(100.0, rel=0.01)
    assert sketch.quantile(0.95) == pytest.approx(200.0, rel=0.01)  # p95 of two: the larger


@pytest.mark.parametrize(
    ("p95", "want"),
    [
        (10 * MiB, 64 * MiB),
        (60 * MiB, 96 * MiB),
        (180 * MiB, 256 * MiB),
        (234 * MiB, 384 * MiB),
        (600 * MiB, 768 * MiB),
        (int(1.7 * GiB), 3 * GiB),
    ],
)
def test_memory_suggestion_is_p95_plus_a_quarter_rounded_up_to_a_nice_size(p95, want):
    assert suggest_memory(p95) == want


@pytest.mark.parametrize(
    ("p95", "want"),
    [(0.0, 0.1), (0.05, 0.1), (0.3, 0.4), (0.8, 1.0), (0.9, 1.5), (3.0, 4.0)],
)
def test_cpu_suggestion_rounds_to_tenths_then_halves(p95, want):
    assert suggest_cpu(p95) == want


def stats(requested, *, peak, cpu_s=0.1, duration_s=1.0, n=20) -> TaskUsageStats:
    s = TaskUsageStats("parse_module", 0, requested)
    for _ in range(n):
        s.add(cpu_s, peak, duration_s)
    return s


def test_advice_for_an_over_requested_task_reads_like_the_issue():
    (advice,) = advise(stats({"memory": 2 * GiB}, peak=180 * MiB))
    assert advice.resource == "memory" and advice.suggested == 256 * MiB
    assert advice.message == ("parse_module requests memory 2GiB, p95 used 180MiB: consider 256MiB")


def test_no_advice_when_the_request_fits():
    assert advise(stats({"cpu": 1, "memory": 256 * MiB}, peak=180 * MiB, cpu_s=0.9)) == []
    # No memory request and a small peak: nothing to say.
    assert advise(stats({"cpu": 1}, peak=40 * MiB, cpu_s=0.9)) == []
    assert advise(TaskUsageStats("t")) == []


def test_advice_to_raise_an_exceeded_or_missing_memory_request():
    (raise_it,) = advise(stats({"memory": 256 * MiB}, peak=300 * MiB))
    assert raise_it.suggested == 384 * MiB and "but p95 used 300MiB" in raise_it.message
    (missing,) = advise(stats({}, peak=600 * MiB))
    assert missing.requested == 0 and missing.suggested == 768 * MiB
    assert "requests no memory" in missing.message


def test_cpu_advice_needs_long_enough_attempts():
    (cpu,) = advise(stats({"cpu": 2}, peak=10 * MiB, cpu_s=0.2, duration_s=2.0))
    assert cpu.resource == "cpu" and cpu.used_p95 == pytest.approx(0.1, rel=0.01)
    assert cpu.suggested == 0.2
    assert cpu.message == "parse_module requests cpu 2, p95 used 0.1 cores: consider 0.2"
    assert advise(stats({"cpu": 2}, peak=10 * MiB, cpu_s=0.01, duration_s=0.1)) == []
    (under,) = advise(stats({"cpu": 1}, peak=10 * MiB, cpu_s=6.0, duration_s=2.0))
    assert under.suggested == 4.0 and "requests only cpu 1" in under.message


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 2 * GiB, int(1.5 * GiB), 234 * MiB)] == [
        "512B",
        "2GiB",
        "1.5GiB",
        "234MiB",
    ]


def measured(grant, *, cpu_s: float, peak: float, value: bool = True):
    outcome = worker_service_pb2.Outcome(
        task_run_id=grant.task_run.id,
        attempt=grant.attempt,
        cpu_seconds=cpu_s,
        peak_memory_bytes=peak,
    )
    if value:
        outcome.value = pickle.dumps(1)
    else:
        outcome.error.message = "boom"
    return outcome


def test_usage_book_folds_accepted_successes_per_node_and_per_task():
    clock = Clock()
    core = Scheduler()
    core.register_worker("w1", {"cpu": 8.0, "memory": 8.0 * GiB}, frozenset({"parse"}), clock())
    spec = map_node("parse", 4)
    spec = NodeSpec(spec.task_name, True, spec.args, {"cpu": 1.0, "memory": float(GiB)})
    submit(core, clock, [spec])
    grants = core.lease("w1", 4, clock())
    assert len(grants) == 4
    clock.now += 2.0
    book = UsageBook()
    outcomes = [
        measured(grants[0], cpu_s=1.0, peak=100 * MiB),
        measured(grants[1], cpu_s=1.0, peak=120 * MiB),
        measured(grants[2], cpu_s=0.0, peak=0.0),  # not measured (async def)
        measured(grants[3], cpu_s=1.0, peak=500 * MiB, value=False),  # failed
    ]
    reported = [ok(grants[0]), ok(grants[1]), ok(grants[2]), fail(grants[3])]
    acks = core.report("w1", reported, clock())
    assert book.record_outcomes(core, outcomes, acks, clock()) == 2
    (row,) = book.flow("fr1")
    assert row.task_name == "parse" and row.node == 0 and row.measured == 2
    assert row.requested == {"cpu": 1.0, "memory": float(GiB)}
    assert row.duration_seconds.quantile(0.5) == pytest.approx(2.0, rel=0.01)
    assert row.cpu_cores.quantile(0.95) == pytest.approx(0.5, rel=0.01)
    assert row.peak_memory_bytes.quantile(0.95) == pytest.approx(120 * MiB, rel=0.01)
    assert [a.resource for a in advise(row)] == ["memory"]
    assert [s.task_name for s in book.fleet(["parse", "other"])] == ["parse"]
    # A stale outcome (an answer other than ACCEPTED) is not folded in.
    assert book.record_outcomes(core, outcomes[:1], [2], clock()) == 0
    book.forget(["fr1"])
    assert book.flow("fr1") == [] and book.by_task["parse"].measured == 2


def test_usage_book_keeps_a_bounded_number_of_flow_runs():
    book = UsageBook(max_flows=3)
    for i in range(5):
        book.record(f"fr{i}", 0, "t", {}, 1.0, 10 * MiB, 1.0)
    assert list(book.by_flow) == ["fr2", "fr3", "fr4"]
    assert book.by_task["t"].measured == 5


# ----------------------------------------------------------------- time in state


def folded(core: Scheduler, clock: Clock) -> Observer:
    observer = Observer(lambda: core, clock)
    for _ in range(10):
        if not observer.catch_up():
            break
    return observer


def test_time_in_state_adds_up_task_run_seconds_per_state():
    clock = Clock(1000.0)
    core = Scheduler()
    core.register_worker("w1", {"cpu": 2.0}, frozenset({"parse"}), clock())
    base = map_node("parse", 3)
    spec = NodeSpec("parse", True, base.args, {"cpu": 1.0}, retries=1, retry_delay_s=10.0)
    flow = submit(core, clock, [spec])
    clock.now = 1001.0
    first = core.lease("w1", 2, clock())
    assert len(first) == 2
    clock.now = 1003.0
    core.report("w1", [ok(first[0]), fail(first[1])], clock())
    retry_at = first[1].task_run.retry_at
    assert retry_at == pytest.approx(1013.0)
    (third,) = core.lease("w1", 2, clock())
    clock.now = 1004.0
    core.report("w1", [ok(third)], clock())
    # Mid-run: the retry waits; time up to "now" counts the open interval.
    observer = folded(core, clock)
    clock.now = 1006.0
    view = observer.digest(flow.id).time_in_state(clock(), ended=False)
    assert view == pytest.approx(
        {"pending": 0.0, "queued": 3 + 2 + 0, "running": 4 + 1, "awaiting_retry": 3.0}
    )
    clock.now = retry_at
    core.tick(clock())
    clock.now = retry_at + 1
    (again,) = core.lease("w1", 2, clock())
    clock.now = retry_at + 3
    core.report("w1", [ok(again)], clock())
    assert flow.terminal
    observer.catch_up()
    view = observer.digest(flow.id).time_in_state(clock.now + 100, ended=True)
    assert view == pytest.approx(
        {"pending": 0.0, "queued": 3 + 2 + 1, "running": 4 + 1 + 2, "awaiting_retry": 10.0}
    )


def test_time_in_state_counts_pending_items_of_a_map_over_a_map():
    clock = Clock(1000.0)
    core = Scheduler()
    core.register_worker("w1", {"cpu": 4.0}, frozenset({"fetch", "parse"}), clock())
    fetch = map_node("fetch", 2)
    parse = NodeSpec("parse", True, [Arg("page", ArgKind.NODE, 0, mapped=True)], {"cpu": 1.0})
    flow = submit(core, clock, [fetch, parse])
    fetches = core.lease("w1", 4, clock())
    assert {g.task_run.node.task_name for g in fetches} == {"fetch"}
    clock.now = 1002.0
    core.report("w1", [ok(fetches[0])], clock())
    clock.now = 1005.0
    core.report("w1", [ok(fetches[1])], clock())
    observer = folded(core, clock)
    view = observer.digest(flow.id).time_in_state(clock(), ended=False)
    # parse[0] waited 2 s for fetch[0], parse[1] 5 s for fetch[1].
    assert view["pending"] == pytest.approx(7.0)
    assert view["running"] == pytest.approx(2 + 5)
    assert view["queued"] == pytest.approx(3.0)  # parse[0] queued since 1002
    # The flow run's detail carries it, and usage rows when a book is given.
    detail = observer.overview(flow.id)["flow"]
    assert set(detail["time_in_state"]) == {"pending", "queued", "running", "awaiting_retry"}
    assert detail["usage"] == []


def test_cancelled_and_infrastructure_failed_attempts_leave_no_stale_running_entry():
    clock = Clock(1000.0)
    core = Scheduler(max_infra_failures=3)
    core.register_worker("w1", {"cpu": 4.0}, frozenset({"parse"}), clock())
    flow = submit(core, clock, [map_node("parse", 2)])
    grants = core.lease("w1", 4, clock())
    clock.now = 1001.0
    crashed = grants[0]
    died = Outcome(
        crashed.task_run.id, crashed.attempt, error=fail(crashed).error, infrastructure=True
    )
    core.report("w1", [died], clock())
    clock.now = 1002.0
    core.cancel_flow(flow.id, clock())
    observer = folded(core, clock)
    digest = observer.digest(flow.id)
    assert digest.running == {} and digest.live == [0, 0, 0, 0]
    view = digest.time_in_state(clock.now + 50, ended=True)
    assert view["running"] == pytest.approx(1 + 2) and view["queued"] == pytest.approx(1.0)


# ------------------------------------------------ the gRPC edge, without a dashboard


class _Context:
    async def abort(self, code, details):
        raise AssertionError(f"aborted: {code} {details}")


async def test_report_outcomes_feeds_the_book_and_get_flow_run_stats_folds_on_demand():
    from fleetflow.api.v1 import coordinator_service_pb2 as cs
    from fleetflow_coordinator.runtime import Runtime
    from fleetflow_coordinator.servicers import CoordinatorServicer, WorkerServicer
    from fleetflow_coordinator.settings import Settings

    clock = Clock(1000.0)
    runtime = Runtime(Settings(), clock=clock)
    runtime.start()
    try:
        core = runtime.core
        core.register_worker("w1", {"cpu": 4.0, "memory": 8.0 * GiB}, frozenset({"p"}), clock())
        base = map_node("p", 2)
        submit(core, clock, [NodeSpec("p", True, base.args, {"cpu": 1.0, "memory": 4.0 * GiB})])
        clock.now = 1001.0
        grants = core.lease("w1", 2, clock())
        clock.now = 1003.0
        request = worker_service_pb2.ReportOutcomesRequest(
            worker_id="w1",
            outcomes=[measured(g, cpu_s=0.5, peak=200 * MiB) for g in grants],
        )
        response = await WorkerServicer(runtime).ReportOutcomes(request, _Context())
        assert list(response.acks) == [1, 1]
        assert runtime.observer is None  # no dashboard
        stats = await CoordinatorServicer(runtime).GetFlowRunStats(
            cs.GetFlowRunStatsRequest(flow_run_id="fr1"), _Context()
        )
    finally:
        await runtime.stop()
    (row,) = stats.tasks
    assert row.task_name == "p" and row.measured_attempts == 2
    assert row.peak_memory_bytes.p95 == pytest.approx(200 * MiB, rel=0.01)
    assert row.cpu_cores.median == pytest.approx(0.25, rel=0.01)
    assert [a.message for a in row.advice] == [
        "p requests memory 4GiB, p95 used 200MiB: consider 256MiB",
        "p requests cpu 1, p95 used 0.25 cores: consider 0.4",
    ]
    assert [t.task_name for t in stats.fleet_tasks] == ["p"]
    assert stats.time.queued_seconds == pytest.approx(2.0)
    assert stats.time.running_seconds == pytest.approx(4.0)
    assert stats.folded_seq == len(core.flows["fr1"].events)
    assert runtime.observer is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(-1.0, 1e12, allow_nan=False), st.just(0.0), st.just(1e-15)),
        max_size=400,
    )
)
def test_add_many_equals_adding_one_by_one(values):
    one, many = QuantileSketch(max_bins=16), QuantileSketch(max_bins=16)
    for v in values:
        one.add(v)
    many.add_many(values)
    assert (many.count, many.zeros, many.lo, many.hi) == (one.count, one.zeros, one.lo, one.hi)
    assert many.total == pytest.approx(one.total)
    for q in (0.0, 0.25, 0.5, 0.95, 1.0):
        assert many.quantile(q) == pytest.approx(one.quantile(q))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(-1.0, 1e12, allow_nan=False), st.just(0.0)), max_size=200))
def test_values_binned_once_add_to_several_sketches_as_add_many(values):
    """A node's row and its task's row take one binning; another accuracy bins for itself."""
    binned = bin_values(values, DEFAULT_GAMMA_LOG)
    for kwargs in ({}, {"max_bins": 8}, {"relative_accuracy": 0.05}):
        alone, shared = QuantileSketch(**kwargs), QuantileSketch(**kwargs)
        alone.add_many(values)
        shared.add_binned(binned)
        assert (shared.count, shared.zeros, shared.lo, shared.hi, shared.total) == (
            alone.count,
            alone.zeros,
            alone.lo,
            alone.hi,
            alone.total,
        )
        assert shared.bins == alone.bins


def test_a_sink_without_measured_many_is_told_each_attempt():
    class Sink:
        def __init__(self):
            self.seen = []

        def measured(self, task_name, cpu_s, peak_bytes):
            self.seen.append((task_name, cpu_s, peak_bytes))

    sink = Sink()
    book = UsageBook(sink=sink)
    book.record_many("f", 0, "t", {"cpu": 1.0}, [0.1, 0.2], [10.0, 20.0], [1.0, 2.0])
    assert sink.seen == [("t", 0.1, 10.0), ("t", 0.2, 20.0)]
    assert book.by_task["t"].measured == book.by_flow["f"][0].measured == 2
