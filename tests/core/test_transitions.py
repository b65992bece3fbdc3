"""The transition table, terminal-is-terminal, validate_state, and robustness to odd input."""

from __future__ import annotations

import math
import pickle

import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.core import (
    InvalidState,
    InvalidTransition,
    Outcome,
    Scheduler,
    TaskRunState,
)
from fleetflow_coordinator.core.model import EventKind, FlowRunState
from fleetflow_coordinator.core.table import (
    EVENTS,
    FLOW_RUN_TRANSITIONS,
    TASK_RUN_TRANSITIONS,
    FlowStimulus,
    Stimulus,
)

from .harness import FakeError, Fleet, items, node


def test_core_numbers_are_the_protocols():
    for state in TaskRunState:
        assert common_pb2.TaskRunState.Value(f"TASK_RUN_STATE_{state.name}") == state
    for state in FlowRunState:
        assert common_pb2.FlowRunState.Value(f"FLOW_RUN_STATE_{state.name}") == state
    for kind in EventKind:
        assert common_pb2.EventKind.Value(f"EVENT_KIND_{kind.name}") == kind
    assert len(TaskRunState) == len(common_pb2.TaskRunState.keys()) - 1
    assert len(EventKind) == len(common_pb2.EventKind.keys()) - 1
    assert set(EVENTS) == set(EventKind)


def test_every_edge_outside_the_table_raises_invalid_transition():
    fleet = Fleet()
    flow = fleet.submit([node("t", items("x", [1]), map_=True)])
    tr = flow.nodes[0].children[0]
    for state in TaskRunState:
        for stimulus in Stimulus:
            if (state, stimulus) in TASK_RUN_TRANSITIONS:
                continue
            tr.state = state  # forced, to try the edge; counts are not checked here
            with pytest.raises(InvalidTransition, match=f"from {state.name} on {stimulus.name}"):
                fleet.core._transition(tr, stimulus, fleet.now)
    for state in FlowRunState:
        for stimulus in FlowStimulus:
            if (state, stimulus) in FLOW_RUN_TRANSITIONS:
                continue
            flow.state = state
            with pytest.raises(InvalidTransition):
                fleet.core._end_flow(flow, stimulus, fleet.now)


def test_terminal_states_have_no_way_out():
    terminal = {
        TaskRunState.COMPLETED,
        TaskRunState.FAILED,
        TaskRunState.UPSTREAM_FAILED,
        TaskRunState.CANCELLED,
        TaskRunState.TIMED_OUT,
    }
    assert not [edge for edge in TASK_RUN_TRANSITIONS if edge[0] in terminal]
    assert not [edge for edge in FLOW_RUN_TRANSITIONS if edge[0] != FlowRunState.RUNNING]


def test_validate_state_names_a_broken_count():
    fleet = Fleet()
    flow = fleet.submit([node("t", items("x", [1, 2]), map_=True)])
    flow.nodes[0].counts[TaskRunState.SCHEDULED] += 1
    with pytest.raises(InvalidState, match="counts"):
        fleet.core.validate_state()


def test_late_result_on_a_finished_run_appends_nothing_and_is_counted():
    fleet = Fleet()
    fleet.add_worker("w", ["t"])
    flow = fleet.submit([node("t", items("x", [1]), map_=True)])
    (grant,) = fleet.core.lease("w", 1, fleet.now)
    fleet.core.cancel_flow(flow.id, fleet.now)
    assert flow.state == FlowRunState.CANCELLED
    events = len(flow.events)
    assert flow.events[-1].kind == EventKind.FLOW_RUN_CANCELLED
    for _ in range(3):
        ack = fleet.core.report(
            "w", [Outcome(grant.task_run.id, grant.attempt, value=b"x")], fleet.now
        )
        assert ack == [2]  # REJECTED_STALE, as before
    assert len(flow.events) == events
    assert fleet.core.events_after_end == {EventKind.LATE_RESULT_REJECTED: 3}
    notes = fleet.core.drain_after_end()
    assert len(notes) == 3 and notes[0][:3] == (flow.id, "LATE_RESULT_REJECTED", grant.task_run.id)
    assert fleet.core.drain_after_end() == []
    fleet.check()


def test_unschedulable_entry_of_a_cancelled_and_pruned_run_is_forgotten():
    # Issue 11: a stale entry made register_worker and lose_worker raise KeyError.
    fleet = Fleet()
    flow = fleet.submit([node("big", items("x", [1]), map_=True, resources={"cpu": 64.0})])
    fleet.add_worker("w", ["t"])
    assert flow.nodes[0].unschedulable_reported
    fleet.core.cancel_flow(flow.id, fleet.now)
    events = len(flow.events)
    assert fleet.core.prune(fleet.now + 1) == [flow.id]
    fleet.add_worker("w", ["t", "big"], cpu=2.0)  # registers again: must not raise
    fleet.core.lose_worker("w", fleet.now, "test")
    fleet.advance(1000.0)
    assert len(flow.events) == events
    fleet.check()


def test_unschedulable_run_that_ends_reports_nothing_after_its_end():
    fleet = Fleet()
    fleet.core.unschedulable_timeout_s = 5.0
    flow = fleet.submit([node("big", items("x", [1, 2]), map_=True, resources={"cpu": 64.0})])
    fleet.add_worker("w", ["big"], cpu=8.0)
    fleet.advance(6.0)
    assert flow.state == FlowRunState.FAILED
    fleet.add_worker("w2", ["big"], cpu=16.0)  # a new reason would have been reported
    fleet.core.lose_worker("w2", fleet.now, "test")
    assert flow.events[-1].kind == EventKind.FLOW_RUN_FAILED
    assert not fleet.core.events_after_end


@pytest.mark.parametrize("duration", [5e-324, math.inf, math.nan, -1.0, 1e308, 0.0])
def test_any_reported_duration_keeps_leasing_working(duration):
    # Issue 11: 5e-324 made batch sizing raise OverflowError in every LeaseTasks.
    fleet = Fleet()
    fleet.add_worker("w", ["t"], cpu=1.0)
    flow = fleet.submit([node("t", items("x", list(range(600))), map_=True)])
    done = 0
    for _ in range(700):
        grants = fleet.core.lease("w", 1, fleet.now, max_batch=512)
        if not grants:
            break
        outcomes = [
            Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1), duration_s=duration)
            for g in grants
        ]
        fleet.core.report("w", outcomes, fleet.now)
        done += len(grants)
    assert done == 600 and flow.state == FlowRunState.COMPLETED
    mean = flow.nodes[0].mean_duration_s
    assert math.isfinite(mean) and mean >= 0.0
    fleet.check()


def test_retry_then_fail_goes_through_the_table():
    fleet = Fleet()
    fleet.add_worker("w", ["t"])
    flow = fleet.submit([node("t", items("x", [1]), map_=True, retries=1, delay=1.0)])
    (g,) = fleet.core.lease("w", 1, fleet.now)
    fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, error=FakeError("x"))], fleet.now)
    assert g.task_run.state == TaskRunState.AWAITING_RETRY
    fleet.advance(1.5)
    (g,) = fleet.core.lease("w", 1, fleet.now)
    fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, error=FakeError("x"))], fleet.now)
    assert flow.state == FlowRunState.FAILED
    assert Fleet.kinds(flow)[-4:] == [
        EventKind.TASK_RUN_SCHEDULED,
        EventKind.TASK_RUN_STARTED,
        EventKind.TASK_RUN_FAILED,
        EventKind.FLOW_RUN_FAILED,
    ]
    fleet.check()


def test_scheduler_without_the_harness_validates_too():
    core = Scheduler()
    core.validate_state()
