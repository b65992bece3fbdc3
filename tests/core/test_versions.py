"""Code versions in the pure core (issue 11, item 1): a node goes only to workers that run its code.

A node carries the fingerprint the client computed for its task; a worker
reports one per task when it registers. Leasing matches them; when no
connected worker runs the submitted version, the node waits with a reason
naming the task and both fingerprints, and fails after the unschedulable
timeout like any other unschedulable request.
"""

from __future__ import annotations

import dataclasses

from fleetflow_coordinator.core import FlowRunState
from fleetflow_coordinator.core.model import EventKind
from fleetflow_coordinator.core.versions import runs_version

from .harness import Fleet, lit, node

NEW, OLD = "1111111111111111", "0000000000000000"


def versioned(task: str, fingerprint: str, **kw):
    return dataclasses.replace(node(task, lit("x", 1), **kw), fingerprint=fingerprint)


def add(fleet: Fleet, worker_id: str, task: str, fingerprint: str, **kw) -> None:
    fleet.core.register_worker(
        worker_id, {"cpu": 4.0}, frozenset([task]), fleet.now,
        task_fingerprints={task: fingerprint}, **kw,
    )  # fmt: skip
    fleet.check()


def reasons(flow) -> list[str]:
    return [e.message for e in flow.events if e.kind == EventKind.TASK_RUN_UNSCHEDULABLE]


def test_a_node_is_leased_only_to_a_worker_with_the_same_fingerprint():
    fleet = Fleet()
    add(fleet, "old", "m:f", OLD)
    add(fleet, "new", "m:f", NEW)
    fleet.submit([versioned("m:f", NEW)])
    assert fleet.core.lease("old", 10, fleet.now) == []
    (grant,) = fleet.core.lease("new", 10, fleet.now)
    assert grant.task_run.node.fingerprint == NEW


def test_old_and_new_flow_runs_each_keep_their_version_side_by_side():
    fleet = Fleet()
    add(fleet, "old", "m:f", OLD)
    add(fleet, "new", "m:f", NEW)
    before = fleet.submit([versioned("m:f", OLD)])
    after = fleet.submit([versioned("m:f", NEW)])
    (old_grant,) = fleet.core.lease("old", 10, fleet.now)
    (new_grant,) = fleet.core.lease("new", 10, fleet.now)
    assert old_grant.task_run.flow is before and new_grant.task_run.flow is after


def test_no_matching_worker_gives_a_reason_with_both_fingerprints_then_fails():
    fleet = Fleet()
    fleet.core.unschedulable_timeout_s = 10.0
    add(fleet, "old", "m:f", OLD)
    flow = fleet.submit([versioned("m:f", NEW)])
    (reason,) = reasons(flow)
    assert reason.startswith("workers run another version of task 'm:f'")
    assert NEW in reason and OLD in reason
    assert fleet.core.lease("old", 10, fleet.now) == []
    demand = fleet.core.demand()
    assert demand[0][4] == reason  # `fleetflow queue` and /api/demand show it
    fleet.core.heartbeat("old", [], fleet.now)
    fleet.advance(10.5)
    assert flow.state == FlowRunState.FAILED
    assert flow.first_error[2] == f"unschedulable for 10 s: {reason}"


def test_a_worker_with_the_new_version_joining_in_time_runs_it():
    fleet = Fleet()
    fleet.core.unschedulable_timeout_s = 10.0
    add(fleet, "old", "m:f", OLD)
    flow = fleet.submit([versioned("m:f", NEW)], output=0)
    fleet.advance(5.0)
    add(fleet, "new", "m:f", NEW)
    fleet.run("new", {"m:f": lambda x: x + 1})
    assert flow.state == FlowRunState.COMPLETED and fleet.result(flow) == 2


def test_any_version_on_the_node_the_worker_or_one_task_matches_every_version():
    fleet = Fleet()
    add(fleet, "old", "m:f", OLD)
    fleet.submit([versioned("m:f", "")])  # @task(any_version=True), or a spec stored before
    assert len(fleet.core.lease("old", 10, fleet.now)) == 1
    add(fleet, "loose", "m:g", OLD, any_version=True)  # fleetflow worker --any-version
    fleet.submit([versioned("m:g", NEW)])
    assert len(fleet.core.lease("loose", 10, fleet.now)) == 1
    add(fleet, "task-opt-out", "m:h", "")  # the worker's task has any_version=True
    fleet.submit([versioned("m:h", NEW)])
    assert len(fleet.core.lease("task-opt-out", 10, fleet.now)) == 1


def test_a_worker_registering_again_with_new_code_gets_the_waiting_node():
    fleet = Fleet()
    add(fleet, "w", "m:f", OLD)
    flow = fleet.submit([versioned("m:f", NEW)])
    assert reasons(flow) and fleet.core.lease("w", 10, fleet.now) == []
    add(fleet, "w", "m:f", NEW)  # restarted on the new code, same id
    assert len(fleet.core.lease("w", 10, fleet.now)) == 1
    assert flow.nodes[0].unschedulable_reported is False


def test_runs_version_rules():
    worker = dataclasses.make_dataclass("W", ["task_fingerprints", "any_version"])
    n = dataclasses.make_dataclass("N", ["task_name", "fingerprint"])
    assert runs_version(worker({"t": NEW}, False), n("t", NEW))
    assert not runs_version(worker({"t": OLD}, False), n("t", NEW))
    assert runs_version(worker({"t": OLD}, True), n("t", NEW))
    assert runs_version(worker({}, False), n("t", NEW))  # an older worker reports none
    assert runs_version(worker({"t": OLD}, False), n("t", ""))


def test_a_function_offered_under_another_module_name_gets_a_hint():
    fleet = Fleet()
    add(fleet, "w", "flows:inc", NEW)
    flow = fleet.submit([versioned("tests.e2e.flows:inc", NEW)])
    (reason,) = reasons(flow)
    assert reason.startswith("no connected worker offers task 'tests.e2e.flows:inc'")
    assert "workers offer 'flows:inc'" in reason and "same name" in reason
