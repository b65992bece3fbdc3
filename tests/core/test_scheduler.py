"""The pure core driven directly: graphs, maps, fan-in, retries, leases, events."""

from __future__ import annotations

import pytest
from fleetflow_coordinator.core import InvalidFlowSpec, Outcome, TaskRunState
from fleetflow_coordinator.core.model import EventKind, FlowRunState
from fleetflow_coordinator.core.scheduler import Ack

from .harness import FakeError, Fleet, items, lit, node, ref

INC = {
    "inc": lambda x: x + 1,
    "total": lambda xs: sum(xs),
    "listing": lambda n: list(range(n)),
    "double": lambda x: 2 * x,
    "collect": lambda xs: xs,
}


def test_literal_map_then_fan_in_keeps_input_order():
    fleet = Fleet()
    fleet.add_worker("w", list(INC))
    flow = fleet.submit(
        [node("inc", items("x", [5, 1, 3]), map_=True), node("collect", ref("xs", 0))], output=1
    )
    fleet.run("w", INC)
    assert flow.state == FlowRunState.COMPLETED
    assert fleet.result(flow) == [6, 2, 4]


def test_map_over_upstream_result_is_split_and_expanded_at_run_time():
    fleet = Fleet()
    fleet.add_worker("w", list(INC))
    flow = fleet.submit(
        [
            node("listing", lit("n", 4)),
            node("inc", ref("x", 0, mapped=True), map_=True),
            node("total", ref("xs", 1)),
        ],
        output=2,
    )
    assert flow.nodes[0].split and not flow.nodes[1].expanded
    fleet.run("w", INC)
    assert fleet.result(flow) == sum(range(1, 5))
    assert flow.nodes[1].counts[TaskRunState.COMPLETED] == 4


def test_map_of_map_pipelines_item_by_item():
    fleet = Fleet()
    fleet.add_worker("w", list(INC))
    flow = fleet.submit(
        [
            node("inc", items("x", [1, 2, 3]), map_=True),
            node("double", ref("x", 0, mapped=True), map_=True),
        ],
        output=1,
    )
    second = flow.nodes[1]
    assert second.expanded and all(c.state == TaskRunState.PENDING for c in second.children)
    grants = fleet.core.lease("w", 1, fleet.now)
    tr = grants[0].task_run
    fleet.core.report("w", [Outcome(tr.id, 1, value=__import__("pickle").dumps(10))], fleet.now)
    # Only the matching item of the downstream map became ready.
    assert [c.state for c in second.children].count(TaskRunState.SCHEDULED) == 1
    fleet.run("w", INC)
    assert fleet.result(flow)[0] == 20


def test_empty_map_completes_and_fan_in_receives_empty_list():
    fleet = Fleet()
    fleet.add_worker("w", list(INC))
    flow = fleet.submit(
        [
            node("listing", lit("n", 0)),
            node("inc", ref("x", 0, mapped=True), map_=True),
            node("collect", ref("xs", 1)),
        ],
        output=2,
    )
    fleet.run("w", INC)
    assert flow.state == FlowRunState.COMPLETED
    assert fleet.result(flow) == []


def test_dependency_readiness_waits_for_every_upstream():
    fleet = Fleet()
    fleet.add_worker("w", ["a", "b", "c"])
    flow = fleet.submit([node("a"), node("b"), node("c", ref("x", 0), ref("y", 1))])
    assert not flow.nodes[2].expanded
    g = fleet.core.lease("w", 1, fleet.now)[0]
    fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, value=b"x")], fleet.now)
    assert not flow.nodes[2].expanded
    g = fleet.core.lease("w", 1, fleet.now)[0]
    fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, value=b"y")], fleet.now)
    assert flow.nodes[2].children[0].state == TaskRunState.SCHEDULED


def test_retry_waits_out_its_delay_then_succeeds():
    fleet = Fleet()
    fleet.add_worker("w", ["flaky"])
    calls = []

    def flaky():
        calls.append(fleet.now)
        if len(calls) < 3:
            raise ValueError("boom")
        return "ok"

    flow = fleet.submit([node("flaky", retries=2, delay=5.0)], output=0)
    fleet.run("w", {"flaky": flaky})
    tr = flow.nodes[0].children[0]
    assert tr.state == TaskRunState.AWAITING_RETRY and len(calls) == 1
    fleet.advance(4.9)
    assert fleet.run("w", {"flaky": flaky}) == 0
    fleet.advance(0.2)
    fleet.run("w", {"flaky": flaky})
    fleet.advance(5.1)
    fleet.run("w", {"flaky": flaky})
    assert flow.state == FlowRunState.COMPLETED and tr.attempt == 3
    assert fleet.kinds(flow).count(EventKind.TASK_RUN_RETRYING) == 2


def test_retries_exhausted_fails_flow_and_dependents_upstream_failed():
    fleet = Fleet()
    fleet.add_worker("w", ["bad", "after", "other"])
    flow = fleet.submit([node("bad", retries=1), node("after", ref("x", 0)), node("other")])
    fns = {"bad": lambda: 1 / 0, "after": lambda x: x, "other": lambda: "fine"}
    fleet.run("w", fns)
    fleet.advance(0.01)
    fleet.run("w", fns)
    assert flow.state == FlowRunState.FAILED
    assert flow.nodes[0].children[0].state == TaskRunState.FAILED
    assert not flow.nodes[1].expanded and flow.nodes[1].failed
    assert flow.nodes[2].children[0].state == TaskRunState.COMPLETED  # independent branch ran
    assert isinstance(flow.first_error[1], FakeError)


def test_failed_map_item_fails_only_its_downstream_item():
    fleet = Fleet()
    fleet.add_worker("w", ["inv", "inc"])
    flow = fleet.submit(
        [
            node("inv", items("x", [1, 0, 2]), map_=True),
            node("inc", ref("x", 0, mapped=True), map_=True),
        ]
    )
    fleet.run("w", {"inv": lambda x: 1 / x, "inc": lambda x: x + 1})
    states = [c.state for c in flow.nodes[1].children]
    assert states == [TaskRunState.COMPLETED, TaskRunState.UPSTREAM_FAILED, TaskRunState.COMPLETED]
    assert flow.state == FlowRunState.FAILED


def test_lease_expiry_requeues_as_new_attempt_and_fences_the_old_one():
    fleet = Fleet(lease_ttl_s=3.0)
    fleet.add_worker("a", ["inc"])
    fleet.add_worker("b", ["inc"])
    flow = fleet.submit([node("inc", lit("x", 1))], output=0)
    g = fleet.core.lease("a", 10, fleet.now)[0]
    assert g.attempt == 1
    for _ in range(3):  # b keeps heartbeating, a is silent
        fleet.advance(1.5)
        fleet.core.heartbeat("b", [], fleet.now)
    assert "a" not in fleet.core.workers
    tr = g.task_run
    assert tr.state == TaskRunState.SCHEDULED and tr.attempt == 2
    assert EventKind.TASK_RUN_LEASE_EXPIRED in fleet.kinds(flow)
    late = fleet.core.report("a", [Outcome(tr.id, 1, value=b"late")], fleet.now)
    assert late == [Ack.REJECTED_STALE] and tr.state == TaskRunState.SCHEDULED
    assert fleet.kinds(flow)[-1] == EventKind.LATE_RESULT_REJECTED
    fleet.run("b", INC)
    assert fleet.result(flow) == 2
    assert fleet.core.heartbeat("a", [], fleet.now) == (False, [])


def test_worker_loss_budget_is_bounded():
    fleet = Fleet(lease_ttl_s=1.0)
    flow = fleet.submit([node("crash")])
    for i in range(5):
        fleet.add_worker(f"w{i}", ["crash"])
        if not fleet.core.lease(f"w{i}", 1, fleet.now):
            break
        fleet.advance(1.5)
    assert flow.state == FlowRunState.FAILED
    assert flow.nodes[0].children[0].infra_failures == fleet.core.max_infra_failures


def test_resources_bound_what_a_worker_is_leased():
    fleet = Fleet()
    fleet.add_worker("w", ["big"], cpu=4.0)
    fleet.submit([node("big", items("x", list(range(10))), map_=True, resources={"cpu": 1.5})])
    assert len(fleet.core.lease("w", 100, fleet.now)) == 2
    assert fleet.core.lease("w", 100, fleet.now) == []
    assert fleet.core.workers["w"].allocated["cpu"] == pytest.approx(3.0)


def test_unschedulable_task_reports_a_reason_once():
    fleet = Fleet()
    fleet.add_worker("w", ["inc"], cpu=2)
    flow = fleet.submit([node("nobody"), node("inc", lit("x", 1), resources={"cpu": 64})])
    reasons = [e.message for e in flow.events if e.kind == EventKind.TASK_RUN_UNSCHEDULABLE]
    assert reasons == [
        "no connected worker offers task 'nobody'",
        "needs cpu=64; the largest worker offers 2",
    ]
    assert flow.state == FlowRunState.RUNNING


def test_event_sequence_numbers_are_dense_and_increasing():
    fleet = Fleet()
    fleet.add_worker("w", list(INC))
    flow = fleet.submit(
        [node("inc", items("x", list(range(20))), map_=True), node("total", ref("xs", 0))]
    )
    fleet.run("w", INC)
    assert [e.seq for e in flow.events] == list(range(1, len(flow.events) + 1))
    assert flow.events[-1].kind == EventKind.FLOW_RUN_COMPLETED


def test_unequal_runtime_lengths_fail_the_node_with_a_clear_message():
    fleet = Fleet()
    fleet.add_worker("w", list(INC))
    flow = fleet.submit(
        [
            node("listing", lit("n", 2)),
            node("inc", ref("x", 0, mapped=True), items("y", [1, 2, 3]), map_=True),
        ]
    )
    fleet.run("w", INC)
    assert flow.state == FlowRunState.FAILED
    assert "differ in length" in flow.first_error[2]


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([node("")], "task_name: must not be empty"),
        ([node("a", ref("x", 0))], "may only use earlier nodes"),
        ([node("a", lit("x", 1), map_=True)], "at least one mapped argument"),
        ([node("a", resources={"cpu": -1.0})], "must be finite and >= 0"),
        ([node("a", lit("x", 1), lit("x", 2))], "given twice"),
    ],
)
def test_invalid_submissions_are_rejected_whole(nodes, message):
    fleet = Fleet()
    with pytest.raises(InvalidFlowSpec, match=message):
        fleet.submit(nodes)
    assert fleet.core.flows == {} and fleet.core.task_runs == {}


def test_idempotency_key_returns_the_same_flow_run():
    fleet = Fleet()
    first = fleet.submit([node("a")], key="k1")
    flow, created = fleet.core.submit("other", "flow", [node("a")], fleet.now, idempotency_key="k1")
    assert flow is first and not created and len(fleet.core.flows) == 1


def test_an_idempotency_key_of_another_flow_is_refused_not_answered_with_its_run():
    # Before, submitting flow "report" with a key first used for flow "flow" returned
    # the other flow's run, and its result, as this submission's.
    fleet = Fleet()
    first = fleet.submit([node("a")], key="k1")
    fleet.core.cancel_flow(first.id, fleet.now)
    with pytest.raises(InvalidFlowSpec, match=rf"'k1': already names flow run {first.id} of"):
        fleet.core.submit("other", "report", [node("a")], fleet.now, idempotency_key="k1")
    assert set(fleet.core.flows) == {first.id}
    # The same flow under the same key gets its run back, cancelled or not.
    again, created = fleet.core.submit("x", "flow", [node("a")], fleet.now, idempotency_key="k1")
    assert again is first and not created


def test_heartbeat_cancels_attempts_the_worker_should_not_run():
    fleet = Fleet()
    fleet.add_worker("w", ["a"])
    known, cancel = fleet.core.heartbeat("w", [(999, 1)], fleet.now)
    assert known and cancel == [(999, 1)]


def test_a_heartbeat_carries_a_new_capacity_as_the_workers_cluster_changes():
    # An executor on a Dask cluster: capacity grows as Dask workers join, and shrinks.
    fleet = Fleet()
    fleet.core.register_worker("w", {"cpu": 0.0}, frozenset({"a"}), fleet.now)
    fleet.submit([node("a", items("x", [1, 2, 3]), map_=True)])
    assert fleet.core.lease("w", 10, fleet.now) == []  # no Dask worker yet
    known, _ = fleet.core.heartbeat("w", [], fleet.now, capacity={"cpu": 2.0, "GPU": 1.0})
    assert known and fleet.core.workers["w"].capacity == {"cpu": 2.0, "GPU": 1.0}
    grants = fleet.core.lease("w", 10, fleet.now)
    assert len(grants) == 2  # the cluster's two threads
    fleet.check()
    held = [(g.task_run.id, g.attempt) for g in grants]
    fleet.core.heartbeat("w", held, fleet.now, capacity={"cpu": 1.0})  # a Dask worker left
    fleet.core.validate_state(check_overcommit=False)  # over until the two attempts end
    assert fleet.core.lease("w", 10, fleet.now) == []
    fleet.core.heartbeat("w", held, fleet.now)  # None: unchanged
    assert fleet.core.workers["w"].capacity == {"cpu": 1.0}


def test_outcome_error_without_retries_records_first_error():
    fleet = Fleet()
    fleet.add_worker("w", ["a"])
    flow = fleet.submit([node("a")])
    g = fleet.core.lease("w", 1, fleet.now)[0]
    err = FakeError("x")
    fleet.core.report("w", [Outcome(g.task_run.id, 1, error=err)], fleet.now)
    assert flow.first_error == ("a", err, "")


def test_a_resent_outcome_of_the_completing_attempt_adds_no_event():
    """At-least-once reporting: the coordinator stored an outcome but its ack
    was lost (it restarted, or the worker's call timed out), so the worker
    sends it again. The task run is not touched, and its log gets no
    LATE_RESULT_REJECTED event claiming the attempt that completed it is not
    current; a genuinely late attempt still gets one."""
    fleet = Fleet(lease_ttl_s=3.0)
    fleet.add_worker("a", ["inc"])
    flow = fleet.submit([node("inc", items("x", [1, 2]), map_=True)])
    first, second = fleet.core.lease("a", 2, fleet.now)
    done = Outcome(first.task_run.id, first.attempt, value=b"1")
    assert fleet.core.report("a", [done], fleet.now) == [Ack.ACCEPTED]
    events = len(flow.events)
    assert fleet.core.report("a", [done], fleet.now) == [Ack.REJECTED_STALE]
    assert len(flow.events) == events and first.task_run.result == b"1"
    stale = Outcome(first.task_run.id, first.attempt + 1, value=b"x")
    assert fleet.core.report("a", [stale], fleet.now) == [Ack.REJECTED_STALE]
    assert fleet.kinds(flow)[-1] == EventKind.LATE_RESULT_REJECTED
    fleet.check()
