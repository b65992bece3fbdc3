# ruff: noqa: E501 - xfail reasons are one-line bug descriptions
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
                "w",
                {"cpu": 4},
                frozenset({"a", "b"}),
                NOW,
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
    # Decided: after a restart, queued task runs are judged once workers had one
    # lease TTL to reconnect; the timeout then runs from there.
    core.tick(NOW + 100)
    core.tick(NOW + 200)
    tr = core.flows["f"].nodes[0].children[0]
    assert tr.state == TaskRunState.FAILED, "unschedulable timeout forgotten across a restart"


# ------------------------------------------------------------------ unschedulable


def test_map_of_map_children_ready_after_the_unschedulable_timeout_still_time_out():
    core = Scheduler(lease_ttl_s=1e9, unschedulable_timeout_s=300.0)
    core.register_worker("w", {"cpu": 4}, frozenset({"a"}), NOW)
    # m2 pipelines over m1 item by item; no worker offers "nobody".
    spec = spec_of(mapnode("a", x=("items", [1, 2])), mapnode("nobody", y=("node", 0)))
    flow = submit(core, spec, "f", NOW)
    first, second = core.lease("w", 2, NOW)
    core.report("w", [Outcome(first.task_run.id, 1, value=pickle.dumps(1))], NOW)
    c0, c1 = flow.nodes[1].children
    assert c0.state == TaskRunState.SCHEDULED
    core.tick(NOW + 301)
    assert c0.state == TaskRunState.FAILED  # the timeout works for the first child
    core.report("w", [Outcome(second.task_run.id, 1, value=pickle.dumps(2))], NOW + 302)
    assert c1.state == TaskRunState.SCHEDULED
    core.tick(NOW + 302 + 301)
    core.tick(NOW + 302 + 3000)
    assert c1.state == TaskRunState.FAILED, (
        "a child that became ready after its node's first timeout is never reported "
        "unschedulable again and waits forever; the flow run never ends"
    )


# ------------------------------------------------------------------ worker identity


@pytest.mark.xfail(
    strict=True,
    reason="pure core still merges a second process into a live worker id (the RegisterWorker RPC refuses it with ALREADY_EXISTS)",
)
def test_second_process_registering_a_live_worker_id_does_not_cost_the_first_its_leases():
    core = Scheduler(lease_ttl_s=10.0)
    core.register_worker("dup", {"cpu": 2}, frozenset({"t"}), NOW, hostname="a", pid=1)
    submit(core, spec_of(plain("t", x=1)), "f", NOW)
    [g] = core.lease("dup", 1, NOW)
    # Another process (other host, other pid: e.g. two replicas started with the same
    # --worker-id) registers the same id; the registration is merged silently.
    core.register_worker("dup", {"cpu": 8}, frozenset({"t"}), NOW + 1, hostname="b", pid=2)
    # Both heartbeat under the same id; the second one does not hold the attempt.
    for t in (NOW + 5, NOW + 11):
        core.heartbeat("dup", [(g.task_run.id, g.attempt)], t)  # first process
        core.heartbeat("dup", [], t + 0.1)  # second process
    assert g.task_run.state == TaskRunState.RUNNING and g.task_run.attempt == 1, (
        "the first process's running attempt was re-queued as 'lease lost in transit' "
        "because another process heartbeats under its id; its outcome is now stale"
    )


# ------------------------------------------------------------------- reservations


def test_reservation_ends_when_the_reserved_task_run_starts_elsewhere():
    core = Scheduler(lease_ttl_s=1e9)
    core.register_worker("W", {"cpu": 4}, frozenset({"s", "b"}), NOW)
    small = mapnode("s", x=("items", list(range(40))))
    big = mapnode("b", x=("items", [1, 2]))
    big.resources.amounts["cpu"] = 4
    submit(core, spec_of(small), "f1", NOW)
    held = core.lease("W", 4, NOW)  # W is full of small task runs
    submit(core, spec_of(big), "f2", NOW)
    for _ in range(40):  # bounded: W finishes one small task run at a time
        if "W" in core._reservations:
            break
        g = held.pop(0)
        core.report("W", [Outcome(g.task_run.id, g.attempt, value=b"1")], NOW)
        held += core.lease("W", 1, NOW)
    lane = core._reservations["W"]
    assert lane.node.task_name == "b"
    # A big worker joins and starts the big task run W was being cleared for.
    core.register_worker("X", {"cpu": 8}, frozenset({"b"}), NOW)
    started = core.lease("X", 1, NOW)
    assert [g.task_run.index for g in started] == [0]
    assert "W" not in core._reservations, (
        "docs: 'a reservation ends when the task run starts'; W stays reserved for the "
        "next big task run and idles (gets nothing) while X could run it"
    )


# ------------------------------------------------------------------ attempt history


def test_reported_infrastructure_failure_ends_its_attempt_in_the_event_log():
    from fleetflow_coordinator.core.queries import attempt_history

    core = _core()
    core.register_worker("w", {"cpu": 1}, frozenset({"t"}), NOW)
    submit(core, spec_of(plain("t")), "f", NOW)
    [g] = core.lease("w", 1, NOW)
    died = common_pb2.TaskError(type="fleetflow.TaskProcessDied", message="exit -9")
    core.report("w", [Outcome(g.task_run.id, 1, error=died, infrastructure=True)], NOW + 1)
    assert g.task_run.attempt == 2
    first = attempt_history(g.task_run)[0]
    assert first.outcome != "RUNNING" and first.error is not None, (
        f"attempt 1 ended with a reported infrastructure failure, but the event log has no "
        f"ending for it: GetTaskRun shows {first.outcome!r} with error={first.error}"
    )


def test_stale_reservation_does_not_drop_a_newer_lane_from_the_ready_index():
    core = Scheduler(lease_ttl_s=1e9)
    core.register_worker("W", {"cpu": 4}, frozenset({"s", "b"}), NOW)
    submit(core, spec_of(mapnode("s", x=("items", list(range(40))))), "f1", NOW)
    held = core.lease("W", 4, NOW)  # W is full of small task runs
    big = mapnode("b", x=("items", [1, 2]))
    big.resources.amounts["cpu"] = 4
    big.retry.CopyFrom(common_pb2.RetryPolicy(retries=1))
    f2 = submit(core, spec_of(big), "f2", NOW)
    for _ in range(40):  # W finishes small task runs one at a time until it is reserved
        if "W" in core._reservations:
            break
        g = held.pop(0)
        core.report("W", [Outcome(g.task_run.id, g.attempt, value=b"1")], NOW)
        held += core.lease("W", 1, NOW)
    assert core._reservations["W"].node.task_name == "b"
    # A big worker runs both big task runs; the first fails once and is retried.
    core.register_worker("X", {"cpu": 8}, frozenset({"b"}), NOW)
    b0, b1 = core.lease("X", 3, NOW)
    core.report("X", [Outcome(b0.task_run.id, 1, error=ERR)], NOW)
    core.tick(NOW + 1)
    assert b0.task_run.state == TaskRunState.SCHEDULED
    # W asks for work again (it finished a small task run).
    g = held.pop(0)
    core.report("W", [Outcome(g.task_run.id, g.attempt, value=b"1")], NOW + 1)
    core.lease("W", 1, NOW + 1)
    # X has room for the retry; nothing else is queued for "b".
    core.report("X", [Outcome(b1.task_run.id, 1, value=b"1")], NOW + 1)
    again = core.lease("X", 5, NOW + 1)
    core.register_worker("Y", {"cpu": 64}, frozenset({"b"}), NOW + 1)
    again += core.lease("Y", 5, NOW + 1)
    assert [x.task_run.id for x in again] == [b0.task_run.id], (
        "the retried big task run is SCHEDULED but no worker can ever lease it: W's stale "
        "reservation popped the node's new lane out of Scheduler.ready; "
        f"flow run f2 is stuck {f2.state.name}"
    )


def test_requested_infinite_retry_delay_does_not_park_the_task_run_forever():
    import math

    core = Scheduler(lease_ttl_s=1e9)
    core.register_worker("w", {"cpu": 1}, frozenset({"t"}), NOW)
    n = plain("t")
    n.retry.CopyFrom(common_pb2.RetryPolicy(retries=1, max_delay_seconds=60))
    flow = submit(core, spec_of(n), "f", NOW)
    [g] = core.lease("w", 1, NOW)
    # fleetflow.Retry(delay=float("inf")) passes the SDK's `delay >= 0` check.
    core.report("w", [Outcome(g.task_run.id, 1, error=ERR, retry_delay_s=math.inf)], NOW)
    assert math.isfinite(g.task_run.retry_at), (
        f"retry_at={g.task_run.retry_at}: the task run waits forever in AWAITING_RETRY "
        f"and flow run {flow.id} never ends (max_delay_seconds=60 is not applied)"
    )
