"""Property: every SCHEDULED task run stays reachable from the ready index, slots and
allocations match what runs, whatever the order of leases, outcomes, retries, losses,
cancellations and reservations (large and small requests mixed)."""

from __future__ import annotations

from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.core import Outcome, Scheduler, TaskRunState, placement
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import mapnode, spec_of, submit

ERR = common_pb2.TaskError(type="x", message="x")


def _check(core: Scheduler) -> None:
    core.validate_state()
    queued = set()
    for by_node in core.ready.values():
        for lane in by_node.values():
            queued.update(id(tr) for tr in lane.queue)
    for tr in core.task_runs.values():
        if tr.state == TaskRunState.SCHEDULED:
            assert id(tr) in queued, f"task run {tr.id} is SCHEDULED but in no ready lane"
    running = [tr for tr in core.task_runs.values() if tr.state == TaskRunState.RUNNING]
    tagged = sum(1 for tr in running if "tg" in tr.node.tags)
    assert core.slots_held.get(("tag", "tg"), 0) == tagged
    for w in core.workers.values():
        for r, total in w.capacity.items():
            assert w.allocated.get(r, 0.0) <= total + 1e-6


steps = st.lists(
    st.one_of(
        st.tuples(st.just("lease"), st.integers(0, 2), st.integers(1, 3)),
        st.tuples(st.just("finish"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("submit"), st.sampled_from([1.0, 3.0, 4.0]), st.integers(1, 4)),
        st.tuples(st.just("lose"), st.integers(0, 2)),
        st.tuples(st.just("cancel"), st.integers(0, 6)),
        st.tuples(
            st.just("tick"),
        ),
    ),
    max_size=80,
)


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(steps)
def test_scheduled_task_runs_stay_leasable(plan):
    # Reservations need MAX_OVERTAKES grants; make them reachable in short plans.
    saved, placement.MAX_OVERTAKES = placement.MAX_OVERTAKES, 2
    try:
        _run(plan)
    finally:
        placement.MAX_OVERTAKES = saved


def _run(plan):
    now = 1000.0
    core = Scheduler(lease_ttl_s=1e9, concurrency_limits={"tg": 3})
    caps = [4.0, 4.0, 8.0]
    for i, cpu in enumerate(caps):
        core.register_worker(f"w{i}", {"cpu": cpu}, frozenset({"t"}), now)
    held: dict[str, list] = {f"w{i}": [] for i in range(3)}
    n_flows = 0
    # Small and large requests waiting together from the start.
    plan = [("submit", 1.0, 4), ("submit", 4.0, 2), ("submit", 1.0, 4), *plan]
    for step in plan:
        kind = step[0]
        if kind == "submit":
            n = mapnode("t", x=("items", list(range(step[2]))))
            n.resources.amounts["cpu"] = step[1]
            n.retry.CopyFrom(common_pb2.RetryPolicy(retries=1))
            if step[1] == 1.0:
                n.tags.append("tg")
            n_flows += 1
            submit(core, spec_of(n), f"f{n_flows}", now)
        elif kind == "lease":
            wid = f"w{step[1]}"
            if wid not in core.workers:
                core.register_worker(wid, {"cpu": caps[step[1]]}, frozenset({"t"}), now)
            held[wid] += core.lease(wid, step[2], now) or []
        elif kind == "finish":
            wid = f"w{step[1]}"
            if held[wid]:
                g = held[wid].pop(0)
                o = (
                    Outcome(g.task_run.id, g.attempt, value=b"1")
                    if step[2]
                    else Outcome(g.task_run.id, g.attempt, error=ERR)
                )
                core.report(wid, [o], now)
        elif kind == "lose":
            core.lose_worker(f"w{step[1]}", now, "test")
            held[f"w{step[1]}"] = []
        elif kind == "cancel":
            core.cancel_task_run(step[1] + 1, now)
        else:
            now += 1.0
            core.tick(now)
        _check(core)
