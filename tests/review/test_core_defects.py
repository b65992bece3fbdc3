"""Defects in the pure core, reproduced by driving fleetflow_coordinator.core.Scheduler."""

from __future__ import annotations

import pickle

import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.core import InvalidFlowSpec, Outcome, Scheduler, TaskRunState
from fleetflow_coordinator.core.model import FlowRunState
from fleetflow_coordinator.store import MemoryStore

from .helpers import mapnode, persist, plain, restart, spec_of, submit

NOW = 1000.0
ERR = common_pb2.TaskError(type="builtins.ValueError", message="boom")


def _core(**kw) -> Scheduler:
    return Scheduler(lease_ttl_s=10.0, **kw)


# ---------------------------------------------------------------- fencing by worker


def test_outcome_from_another_worker_is_not_accepted():
    core = _core()
    core.register_worker("victim", {"cpu": 1}, frozenset({"t"}), NOW)
    core.register_worker("intruder", {"cpu": 1}, frozenset({"t"}), NOW)
    flow = submit(core, spec_of(plain("t", x=1)), "f", NOW)
    [grant] = core.lease("victim", 1, NOW)
    # The intruder never held this attempt; (id, attempt=1) is trivially guessable.
    acks = core.report("intruder", [Outcome(grant.task_run.id, 1, value=b"forged")], NOW)
    assert acks != [1], "an outcome for an attempt leased to another worker was ACCEPTED"
    assert grant.task_run.state == TaskRunState.RUNNING
    assert flow.state == FlowRunState.RUNNING


def test_outcome_from_unregistered_worker_is_not_accepted():
    core = _core()
    core.register_worker("victim", {"cpu": 1}, frozenset({"t"}), NOW)
    submit(core, spec_of(plain("t", x=1)), "f", NOW)
    [grant] = core.lease("victim", 1, NOW)
    acks = core.report("nobody", [Outcome(grant.task_run.id, 1, error=ERR)], NOW)
    assert acks != [1], "an unregistered worker failed another worker's attempt"
    assert grant.task_run.state == TaskRunState.RUNNING


# ------------------------------------------------------- submissions rejected whole


def test_map_node_with_a_mapped_plain_literal_is_rejected_whole():
    core = _core()
    n1 = common_pb2.TaskNode(task_name="m", map=True)
    n1.args.add(name="x", literal=pickle.dumps([1, 2, 3]), mapped=True)
    spec = spec_of(plain("a", x=1), n1)
    try:
        submit(core, spec, "f", NOW, key="k")
    except InvalidFlowSpec:
        pass
    except Exception as exc:  # noqa: BLE001
        pytest.fail(
            f"{type(exc).__name__}: {exc}; left behind: flows={list(core.flows)}, "
            f"idempotency={core.idempotency}, queued task runs={len(core.task_runs)}"
        )
    assert core.flows == {} and core.task_runs == {} and core.idempotency == {}


def test_map_node_with_a_mapped_gather_is_rejected_as_invalid():
    core = _core()
    n2 = common_pb2.TaskNode(task_name="m", map=True)
    n2.args.add(name="x", nodes=common_pb2.NodeList(nodes=[0, 1]), mapped=True)
    with pytest.raises(InvalidFlowSpec):
        submit(core, spec_of(plain("a"), plain("b"), n2), "f", NOW)


# ----------------------------------------------------- results of the wrong shape


def test_items_reported_for_a_non_split_lease_do_not_break_a_downstream_gather():
    core = _core()
    core.register_worker("w", {"cpu": 4}, frozenset({"a", "b", "g"}), NOW)
    # g gathers [a, b]; neither a nor b is mapped over, so neither lease is split_result.
    flow = submit(core, spec_of(plain("a"), plain("b"), plain("g", xs=("nodes", [0, 1]))), "f", NOW)
    grants = core.lease("w", 2, NOW)
    assert all(not g.task_run.node.split for g in grants)
    # A buggy/hostile worker answers the non-split lease with `items`.
    core.report("w", [Outcome(grants[0].task_run.id, 1, items=[b"1", b"2"])], NOW)
    core.report("w", [Outcome(grants[1].task_run.id, 1, value=pickle.dumps(2))], NOW)
    try:
        core.lease("w", 1, NOW)
    except AssertionError as exc:
        g = flow.nodes[2].children[0]
        pytest.fail(
            f"lease() crashed ({exc}); g is left {g.state.name} on worker {g.worker_id} "
            "with no lease delivered"
        )


# --------------------------------------------------------- retry policy arithmetic


def test_capped_exponential_backoff_never_crashes_report():
    core = Scheduler(lease_ttl_s=1e9)
    core.register_worker("w", {"cpu": 1}, frozenset({"t"}), NOW)
    n = plain("t")
    # "retry up to 100 times, backoff x1e10, at most 60 s apart": finite, >= 0, valid.
    n.retry.CopyFrom(
        common_pb2.RetryPolicy(
            retries=100, retry_delay_seconds=1, backoff=1e10, max_delay_seconds=60
        )
    )
    flow = submit(core, spec_of(n), "f", NOW)
    now = NOW
    for _ in range(80):
        grants = core.lease("w", 1, now)
        if not grants:
            now += 61
            core.tick(now)
            continue
        g = grants[0]
        try:
            core.report("w", [Outcome(g.task_run.id, g.attempt, error=ERR)], now)
        except OverflowError as exc:
            tr = g.task_run
            pytest.fail(
                f"report() raised OverflowError ({exc}) at failure {tr.code_failures}; "
                f"the task run is stuck {tr.state.name} with worker_id={tr.worker_id}"
            )
    assert flow.state == FlowRunState.RUNNING


# --------------------------------------------------------------------- restore


def test_restore_keeps_cancelled_vs_failed_final_state():
    def run(restart_midway: bool) -> FlowRunState:
        core = _core()
        store = MemoryStore()
        core.register_worker("w", {"cpu": 4}, frozenset({"a", "b"}), NOW)
        flow = submit(core, spec_of(plain("a"), plain("b")), "f", NOW)
        grants = {g.task_run.node.task_name: g for g in core.lease("w", 2, NOW)}
        core.cancel_task_run(grants["a"].task_run.id, NOW)
        if restart_midway:
            core = restart(core, store, NOW)
            core.register_worker(
                "w", {"cpu": 4}, frozenset({"a", "b"}), NOW,
                running=[(grants["b"].task_run.id, grants["b"].attempt)],
            )
            flow = core.flows["f"]
        core.report("w", [Outcome(grants["b"].task_run.id, 1, value=pickle.dumps(1))], NOW)
        return flow.state

    without = run(False)
    assert without == FlowRunState.CANCELLED
    assert run(True) == without, "a coordinator restart changed how the flow run ended"


def test_task_run_ids_are_not_reused_after_prune_and_restart():
    core = _core()
    store = MemoryStore()
    core.register_worker("w", {"cpu": 4}, frozenset({"t"}), NOW)
    submit(core, spec_of(plain("t", x=1)), "old", NOW)
    [g] = core.lease("w", 1, NOW)
    old_id = g.task_run.id
    core.report("w", [Outcome(old_id, 1, value=pickle.dumps(1))], NOW)
    persist(core, store)
    core.prune(NOW + 1)
    core = restart(core, store, NOW + 2)
    core.register_worker("w2", {"cpu": 4}, frozenset({"t"}), NOW + 2)
    submit(core, spec_of(plain("t", x=2)), "new", NOW + 2)
    [g2] = core.lease("w2", 1, NOW + 2)
    assert g2.task_run.id != old_id, (
        "a task run id was issued twice; a late outcome for the old one "
        "(same id, attempt 1) now lands on a different flow run's task run"
    )


def test_restored_unschedulable_task_still_times_out_without_any_worker():
    core = _core(unschedulable_timeout_s=30.0)
    store = MemoryStore()
    flow = submit(core, spec_of(plain("nobody_offers_this")), "f", NOW)
    assert flow.nodes[0].unschedulable_reported
    core = restart(core, store, NOW + 1, unschedulable_timeout_s=30.0)
    core.tick(NOW + 100)
    tr = core.flows["f"].nodes[0].children[0]
    assert tr.state == TaskRunState.FAILED, "unschedulable timeout forgotten across a restart"
