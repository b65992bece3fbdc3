"""Issue 5 in the pure core: timeouts, cancellation, retry policies, limits, priorities."""

from __future__ import annotations

import pickle

from fleetflow_coordinator.core import NodeSpec, Outcome, TaskRunState
from fleetflow_coordinator.core.model import EventKind, FlowRunState

from .harness import FakeError, Fleet, items, lit, node, ref


def _fail(fleet, worker, **flags):
    grants = fleet.core.lease(worker, 1, fleet.now)
    assert grants, "nothing was leased"
    g = grants[0]
    fleet.core.report(
        worker, [Outcome(g.task_run.id, g.attempt, error=FakeError("x"), **flags)], fleet.now
    )
    return g.task_run


def test_timeouts_are_retried_then_end_timed_out():
    fleet = Fleet()
    fleet.add_worker("w", ["slow"])
    flow = fleet.submit([node("slow", retries=3)])
    for _ in range(4):
        tr = _fail(fleet, "w", timed_out=True)
        fleet.advance(0.01)
    assert tr.state == TaskRunState.TIMED_OUT and tr.attempt == 4
    assert flow.state == FlowRunState.FAILED
    kinds = fleet.kinds(flow)
    assert kinds.count(EventKind.TASK_RUN_RETRYING) == 3
    assert EventKind.TASK_RUN_TIMED_OUT in kinds


def test_non_retryable_fails_at_once_and_requested_delay_is_honoured():
    fleet = Fleet()
    fleet.add_worker("w", ["a", "b"])
    flow = fleet.submit([node("a", retries=5)])
    tr = _fail(fleet, "w", non_retryable=True)
    assert tr.state == TaskRunState.FAILED and flow.state == FlowRunState.FAILED
    fleet.submit([node("b", retries=5, delay=100.0)])
    tr = _fail(fleet, "w", retry_delay_s=2.0)
    assert tr.state == TaskRunState.AWAITING_RETRY and tr.retry_at == fleet.now + 2.0


def test_exponential_backoff_with_cap_through_the_core():
    fleet = Fleet()
    fleet.add_worker("w", ["a"])
    spec = NodeSpec(
        "a", False, [], {"cpu": 1.0}, retries=4, retry_delay_s=1.0, backoff=2.0, max_delay_s=3.0
    )
    fleet.submit([spec])
    gaps = []
    for _ in range(4):
        tr = _fail(fleet, "w")
        gaps.append(tr.retry_at - fleet.now)
        fleet.advance(tr.retry_at - fleet.now)
    assert gaps == [1.0, 2.0, 3.0, 3.0]


def test_cancel_flow_ends_everything_and_nothing_new_starts():
    fleet = Fleet()
    fleet.add_worker("w", ["a", "b", "c"], cpu=2)
    flow = fleet.submit(
        [
            node("a", items("x", list(range(10))), map_=True),
            node("b", ref("xs", 0)),
            node("c", lit("y", 1)),
        ]
    )
    running = fleet.core.lease("w", 10, fleet.now)
    assert len(running) == 2
    cancelled = fleet.core.cancel_flow(flow.id, fleet.now)
    assert cancelled == 11  # 10 map children + c; b never expanded
    assert flow.state == FlowRunState.CANCELLED
    assert fleet.core.lease("w", 10, fleet.now) == []
    assert fleet.core.workers["w"].allocated["cpu"] == 0.0
    # The worker is told to stop what it still runs; its late outcome is fenced.
    _, cancel = fleet.core.heartbeat("w", [(g.task_run.id, g.attempt) for g in running], fleet.now)
    assert sorted(cancel) == sorted((g.task_run.id, g.attempt) for g in running)
    acks = fleet.core.report("w", [Outcome(running[0].task_run.id, 1, value=b"x")], fleet.now)
    assert acks == [2] and flow.state == FlowRunState.CANCELLED


def test_cancel_one_node_fails_its_dependents_upstream():
    fleet = Fleet()
    fleet.add_worker("w", ["a", "b"])
    flow = fleet.submit([node("a", items("x", [1, 2]), map_=True), node("b", ref("xs", 0))])
    assert fleet.core.cancel_node(flow.id, 0, fleet.now) == 2
    assert flow.nodes[1].terminal and flow.state == FlowRunState.CANCELLED


def test_tag_limit_bounds_running_task_runs_across_flows_and_frees_on_loss():
    fleet = Fleet(lease_ttl_s=2.0)
    fleet.core.set_limit("warehouse", 1)
    fleet.add_worker("w1", ["load"], cpu=8)
    fleet.add_worker("w2", ["load"], cpu=8)
    spec = NodeSpec("load", True, [items("x", [1, 2, 3])], {"cpu": 1.0}, tags=("warehouse",))
    fleet.submit([spec])
    fleet.submit([spec])
    assert len(fleet.core.lease("w1", 10, fleet.now)) == 1
    assert fleet.core.lease("w2", 10, fleet.now) == []
    fleet.advance(1.0)
    fleet.core.heartbeat("w2", [], fleet.now)
    fleet.advance(1.5)  # w1 silent past the TTL: its slot comes back
    assert "w1" not in fleet.core.workers
    assert len(fleet.core.lease("w2", 10, fleet.now)) == 1
    assert fleet.core.slots_held[("tag", "warehouse")] == 1


def test_per_task_concurrency_limit():
    fleet = Fleet()
    fleet.add_worker("w", ["t"], cpu=16)
    spec = NodeSpec("t", True, [items("x", list(range(9)))], {"cpu": 1.0}, concurrency_limit=3)
    fleet.submit([spec])
    assert len(fleet.core.lease("w", 100, fleet.now)) == 3


def test_priority_first_then_flow_runs_take_turns():
    fleet = Fleet()
    fleet.add_worker("w", ["t"], cpu=1000)
    big = fleet.submit([node("t", items("x", list(range(1000))), map_=True)])
    small = fleet.submit([node("t", items("x", list(range(10))), map_=True)])
    grants = fleet.core.lease("w", 20, fleet.now)
    from_small = sum(1 for g in grants if g.task_run.flow is small)
    assert from_small == 10, "a small flow run submitted later is not starved"
    urgent, _ = fleet.core.submit(
        "u", "flow", [node("t", items("x", [1, 2, 3]), map_=True)], fleet.now, priority=5
    )
    grants = fleet.core.lease("w", 3, fleet.now)
    assert [g.task_run.flow for g in grants] == [urgent] * 3
    assert big.state == FlowRunState.RUNNING


def test_result_over_the_limit_fails_with_a_clear_message():
    fleet = Fleet()
    fleet.core.max_result_bytes = 10
    fleet.add_worker("w", ["a"])
    flow = fleet.submit([node("a")])
    g = fleet.core.lease("w", 1, fleet.now)[0]
    fleet.core.report("w", [Outcome(g.task_run.id, 1, value=pickle.dumps("x" * 100))], fleet.now)
    assert flow.state == FlowRunState.FAILED
    assert "over the inline result limit of 10 bytes" in flow.first_error[2]


def test_drained_worker_hands_back_without_using_budgets():
    fleet = Fleet()
    fleet.add_worker("w", ["a"])
    flow = fleet.submit([node("a", retries=0)])
    g = fleet.core.lease("w", 1, fleet.now)[0]
    assert fleet.core.release_leases("w", [(g.task_run.id, g.attempt)], fleet.now) == 1
    tr = g.task_run
    assert tr.state == TaskRunState.SCHEDULED and tr.attempt == 2
    assert tr.infra_failures == 0 and tr.code_failures == 0
    assert fleet.core.workers["w"].allocated["cpu"] == 0.0
    assert fleet.core.release_leases("w", [(tr.id, 1)], fleet.now) == 0
    assert flow.state == FlowRunState.RUNNING


def test_pools_route_tasks_to_their_workers_only():
    fleet = Fleet()
    fleet.add_worker("cpu", ["train"])
    flow = fleet.submit([NodeSpec("train", False, [], {"cpu": 1.0}, pool="gpu")])
    assert fleet.core.lease("cpu", 10, fleet.now) == []
    reasons = [e.message for e in flow.events if e.kind == EventKind.TASK_RUN_UNSCHEDULABLE]
    assert reasons == ["no connected worker offers task 'train' in pool 'gpu'"]
    fleet.core.register_worker(
        "g", {"cpu": 1.0}, frozenset(["train"]), fleet.now, pools=frozenset({"gpu"})
    )
    assert len(fleet.core.lease("g", 10, fleet.now)) == 1


def test_unschedulable_fails_after_the_timeout_unless_a_big_worker_joins():
    fleet = Fleet()
    fleet.core.unschedulable_timeout_s = 10.0
    fleet.add_worker("small", ["big"], cpu=16)
    doomed = fleet.submit([node("big", resources={"cpu": 64.0})])
    saved = fleet.submit([node("big", resources={"cpu": 32.0})])
    fleet.core.heartbeat("small", [], fleet.now)
    fleet.advance(5.0)
    fleet.core.heartbeat("small", [], fleet.now)
    fleet.add_worker("large", ["big"], cpu=32)  # joins in time for the 32-CPU request
    fleet.advance(5.5)
    assert doomed.state == FlowRunState.FAILED
    assert "needs cpu=64; the largest worker offers 32" in doomed.first_error[2]
    assert saved.state == FlowRunState.RUNNING
    assert len(fleet.core.lease("large", 10, fleet.now)) == 1


def test_demand_groups_waiting_task_runs_by_pool_and_shape():
    fleet = Fleet()
    fleet.submit([node("a", items("x", [1, 2, 3]), map_=True, resources={"cpu": 2.0})])
    fleet.submit([NodeSpec("b", False, [], {"cpu": 1.0, "gpu": 1.0}, pool="gpu")])
    demand = fleet.core.demand()
    assert demand[0][:3] == ("default", {"cpu": 2.0}, 3)
    assert demand[1][0] == "gpu" and demand[1][1] == {"cpu": 1.0, "gpu": 1.0}
    assert "no connected worker offers task 'b'" in demand[1][4]


def test_large_request_is_not_starved_by_small_ones():
    from fleetflow_coordinator.core.scheduler import MAX_OVERTAKES

    fleet = Fleet()
    fleet.add_worker("w", ["small", "big"], cpu=4)
    fleet.submit([node("small", items("x", list(range(500))), map_=True)])
    running = fleet.core.lease("w", 100, fleet.now)  # the worker is full of small ones
    big = fleet.submit([node("big", resources={"cpu": 4.0})])
    overtakes = 0
    # Small tasks finish one by one; each time the worker has room for one more.
    for _ in range(200):
        done = running.pop(0)
        fleet.core.report("w", [Outcome(done.task_run.id, done.attempt, value=b"1")], fleet.now)
        grants = fleet.core.lease("w", 100, fleet.now)
        if any(g.task_run.flow is big for g in grants):
            break
        overtakes += len(grants)
        running.extend(grants)
    assert big.nodes[0].children[0].state == TaskRunState.RUNNING
    assert overtakes <= MAX_OVERTAKES  # the documented bound


def test_flow_run_timeout_cancels_what_is_left_and_fails():
    fleet = Fleet()
    fleet.add_worker("w", ["a"], cpu=1)
    flow, _ = fleet.core.submit(
        "f", "flow", [node("a", items("x", [1, 2, 3]), map_=True)], fleet.now, timeout_s=5.0
    )
    running = fleet.core.lease("w", 10, fleet.now)
    assert len(running) == 1
    fleet.core.heartbeat("w", [], fleet.now)
    fleet.advance(4.9)
    assert flow.state == FlowRunState.RUNNING
    fleet.core.heartbeat("w", [], fleet.now)
    fleet.advance(0.2)
    assert flow.state == FlowRunState.FAILED
    assert flow.first_error[2] == "flow run timed out after 5 s"
    assert [c.state for c in flow.nodes[0].children] == [TaskRunState.CANCELLED] * 3
    assert fleet.core.workers["w"].allocated["cpu"] == 0.0


def test_turns_alternate_even_when_idle_polls_come_in_between():
    fleet = Fleet()
    fleet.add_worker("w", ["t"], cpu=1)
    big = fleet.submit([node("t", items("x", list(range(50))), map_=True)])
    small = fleet.submit([node("t", items("x", list(range(5))), map_=True)])
    served = []
    for _ in range(10):
        [g] = fleet.core.lease("w", 10, fleet.now)
        served.append(g.task_run.flow)
        assert fleet.core.lease("w", 10, fleet.now) == []  # an idle poll: no room
        fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, value=b"1")], fleet.now)
    assert served.count(small) == 5 and served.count(big) == 5


def test_repeated_lease_calls_are_no_sign_of_life():
    """The edge re-runs lease() for one long poll; a silent worker still expires."""
    fleet = Fleet(lease_ttl_s=2.0)
    fleet.add_worker("w", ["t"], cpu=1.0)
    for _ in range(4):  # a long poll sent before the worker went silent, woken again and again
        fleet.advance(0.5)
        assert fleet.core.lease("w", 1, fleet.now) == []
    fleet.advance(0.5)
    assert "w" not in fleet.core.workers
    fleet.add_worker("w", ["t"], cpu=1.0)
    assert fleet.core.touch("w", fleet.now + 1.5)  # an RPC arriving is one
    fleet.advance(2.0)
    assert "w" in fleet.core.workers


def test_a_coordinator_stall_is_not_counted_against_workers():
    """Heartbeats that queued up unread while the coordinator was blocked still count."""
    fleet = Fleet(lease_ttl_s=2.0)
    fleet.add_worker("w", ["t"], cpu=1.0)
    fleet.now += 3.0  # the coordinator's loop was blocked for 3 s: no tick, no heartbeat read
    fleet.core.excuse_stall(3.0)
    fleet.core.tick(fleet.now)
    assert "w" in fleet.core.workers
    fleet.advance(2.5)  # real silence after the stall still expires it
    assert "w" not in fleet.core.workers
