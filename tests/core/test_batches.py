"""Lease batches: short task runs of one node share one slot, run one after another."""

from __future__ import annotations

import pickle

from fleetflow_coordinator.core import Ack, NodeSpec, Outcome, TaskRunState
from fleetflow_coordinator.core.scheduler import BATCH_TARGET_S, LeaseGrant

from .harness import Fleet, items


def _map(n: int, *, cpu: float = 1.0, tags: tuple[str, ...] = ()) -> NodeSpec:
    return NodeSpec("t", True, [items("x", list(range(n)))], {"cpu": cpu}, tags=tags)


def _ok(grant: LeaseGrant, duration_s: float = 0.001) -> Outcome:
    value = pickle.dumps(pickle.loads(grant.args[0][1]) + 1)
    return Outcome(grant.task_run.id, grant.attempt, value=value, duration_s=duration_s)


def _warm(fleet: Fleet, worker: str, duration_s: float = 0.001) -> None:
    """Run one task run alone so the node has a reported duration."""
    (grant,) = fleet.core.lease(worker, 1, fleet.now, max_batch=64)
    assert grant.batch == 0, "no duration known yet: no batch"
    assert fleet.core.report(worker, [_ok(grant, duration_s)], fleet.now) == [Ack.ACCEPTED]


def test_short_task_runs_come_in_one_batch_that_holds_one_slot():
    fleet = Fleet()
    fleet.add_worker("a", ["t"], cpu=1.0)
    fleet.add_worker("b", ["t"], cpu=1.0)
    fleet.submit([_map(200)])
    _warm(fleet, "a", duration_s=0.001)
    grants = fleet.core.lease("a", 1, fleet.now, max_batch=64)
    # int(20 ms / 1 ms) = 20 members, all in one batch, holding one cpu.
    assert len(grants) == int(BATCH_TARGET_S / 0.001)
    assert len({g.batch for g in grants}) == 1 and grants[0].batch != 0
    worker = fleet.core.workers["a"]
    assert worker.allocated["cpu"] == 1.0 and len(worker.running) == len(grants)
    assert fleet.core.lease("a", 1, fleet.now, max_batch=64) == []  # the slot is taken
    # The slot stays taken until the last member is reported.
    assert fleet.core.report("a", [_ok(g) for g in grants[:-1]], fleet.now) == [Ack.ACCEPTED] * (
        len(grants) - 1
    )
    assert worker.allocated["cpu"] == 1.0 and len(worker.running) == 1
    assert fleet.core.report("a", [_ok(grants[-1])], fleet.now) == [Ack.ACCEPTED]
    assert worker.allocated["cpu"] == 0.0 and not worker.running
    assert all(g.task_run.state == TaskRunState.COMPLETED for g in grants)


def test_long_task_runs_and_workers_without_batches_get_one_each():
    fleet = Fleet()
    fleet.add_worker("a", ["t"], cpu=2.0)
    fleet.submit([_map(50)])
    _warm(fleet, "a", duration_s=BATCH_TARGET_S)  # too long to batch
    assert [g.batch for g in fleet.core.lease("a", 2, fleet.now, max_batch=64)] == [0, 0]

    fleet = Fleet()
    fleet.add_worker("a", ["t"], cpu=2.0)
    fleet.submit([_map(50)])
    _warm(fleet, "a", duration_s=0.0001)
    assert [g.batch for g in fleet.core.lease("a", 2, fleet.now)] == [0, 0]  # max_batch=1


def test_a_batch_leaves_a_share_of_the_lane_for_other_workers():
    fleet = Fleet()
    for w in ("a", "b", "c", "d"):
        fleet.add_worker(w, ["t"], cpu=1.0)
        assert fleet.core.lease(w, 1, fleet.now) == []  # all four are polling
    for i in range(100):  # registered, heartbeating, never leasing: no share for them
        fleet.add_worker(f"idle{i}", ["t"], cpu=1.0)
    fleet.submit([_map(41)])
    _warm(fleet, "a", duration_s=0.0001)  # 200 would fit the target
    grants = fleet.core.lease("a", 1, fleet.now, max_batch=256)
    assert len(grants) == 10  # 40 ready / 4 workers
    # Each next worker gets a quarter of what is left: ceil(30/4), ceil(22/4), ceil(16/4).
    assert [len(fleet.core.lease(w, 1, fleet.now, max_batch=256)) for w in "bcd"] == [8, 6, 4]


def test_a_concurrency_limit_counts_a_batch_once():
    fleet = Fleet()
    fleet.core.set_limit("db", 1)
    fleet.add_worker("a", ["t"], cpu=4.0)
    fleet.submit([_map(30, tags=("db",))])
    _warm(fleet, "a")
    grants = fleet.core.lease("a", 4, fleet.now, max_batch=8)
    assert len(grants) == 8 and len({g.batch for g in grants}) == 1
    assert fleet.core.slots_held[("tag", "db")] == 1
    fleet.core.report("a", [_ok(g) for g in grants], fleet.now)
    assert fleet.core.slots_held[("tag", "db")] == 0


def test_losing_the_worker_requeues_every_member_and_frees_the_slot():
    fleet = Fleet(lease_ttl_s=5.0)
    fleet.add_worker("a", ["t"], cpu=1.0)
    flow = fleet.submit([_map(30)], output=0)
    _warm(fleet, "a")
    grants = fleet.core.lease("a", 1, fleet.now, max_batch=16)
    assert len(grants) == 16
    fleet.core.report("a", [_ok(grants[0])], fleet.now)  # one member done before the loss
    fleet.core.lose_worker("a", fleet.now, "test")
    fleet.check()
    assert all(g.task_run.state == TaskRunState.SCHEDULED for g in grants[1:])
    assert all(g.task_run.batch is None for g in grants)
    # One infrastructure failure for the batch (its first member still held),
    # none for the members behind it, which had not started (dask#5234's class).
    assert [g.task_run.infra_failures for g in grants[1:]] == [1] + [0] * 14
    assert all(g.task_run.attempt == 2 for g in grants[1:])
    fleet.add_worker("b", ["t"], cpu=1.0)
    fleet.run("b", {"t": lambda x: x + 1})
    assert fleet.result(flow) == [x + 1 for x in range(30)]
    assert fleet.core.workers["b"].allocated["cpu"] == 0.0


def test_a_late_member_is_fenced_and_a_cancelled_member_keeps_the_slot_for_the_rest():
    fleet = Fleet(lease_ttl_s=5.0)
    fleet.add_worker("a", ["t"], cpu=1.0)
    fleet.submit([_map(30)])
    _warm(fleet, "a")
    grants = fleet.core.lease("a", 1, fleet.now, max_batch=5)
    assert len(grants) == 5
    fleet.core.cancel_task_run(grants[1].task_run.id, fleet.now)
    worker = fleet.core.workers["a"]
    assert worker.allocated["cpu"] == 1.0 and len(worker.running) == 4
    acks = fleet.core.report("a", [_ok(g) for g in grants], fleet.now)
    assert acks == [Ack.ACCEPTED, Ack.REJECTED_STALE, Ack.ACCEPTED, Ack.ACCEPTED, Ack.ACCEPTED]
    assert worker.allocated["cpu"] == 0.0 and not worker.running


def test_a_draining_worker_hands_a_batch_back_without_using_retries():
    fleet = Fleet()
    fleet.add_worker("a", ["t"], cpu=1.0)
    fleet.submit([_map(30)])
    _warm(fleet, "a")
    grants = fleet.core.lease("a", 1, fleet.now, max_batch=6)
    released = [(g.task_run.id, g.attempt) for g in grants]
    assert fleet.core.release_leases("a", released, fleet.now) == 6
    assert fleet.core.workers["a"].allocated["cpu"] == 0.0
    assert all(g.task_run.state == TaskRunState.SCHEDULED for g in grants)
    assert all(g.task_run.code_failures == g.task_run.infra_failures == 0 for g in grants)


def test_members_of_a_lost_batch_are_leased_alone_so_a_worker_killer_is_charged_itself():
    """A member that kills its worker sits behind another member in its batch:
    the batch's charge goes to the first member, and the killer's next attempt
    is leased alone, so each further loss is charged to it and it gives up
    after max_infra_failures, while its batch-mates are charged at most once."""
    fleet = Fleet(lease_ttl_s=5.0)
    fleet.submit([_map(40)])
    killer = None
    for n in range(40):
        fleet.add_worker(f"w{n}", ["t"], cpu=1.0)
        if n == 0:
            _warm(fleet, "w0")
        grants = fleet.core.lease(f"w{n}", 1, fleet.now, max_batch=8)
        assert grants
        if killer is None:
            assert len(grants) == 8 and grants[0].batch != 0
            killer = grants[3].task_run
        ids = [g.task_run.id for g in grants]
        if killer.id not in ids:  # the killer's batch-mates run and report
            fleet.core.report(f"w{n}", [_ok(g) for g in grants], fleet.now)
            continue
        # the members ahead of the killer finished; their outcomes did not arrive
        fleet.core.lose_worker(f"w{n}", fleet.now, "killed by task run")
        fleet.check()
        if killer.state == TaskRunState.FAILED:
            break
    assert killer.state == TaskRunState.FAILED
    assert killer.infra_failures == fleet.core.max_infra_failures
    others = [tr for tr in fleet.core.task_runs.values() if tr is not killer]
    assert max(tr.infra_failures for tr in others) <= 1
    assert sum(tr.infra_failures for tr in others) == 1  # the first loss's batch charge


def test_a_batch_lost_in_transit_counts_once():
    """The lease answer carrying a batch never reached the worker (a cut link
    mid-answer; Hatchet's step runs stuck "assigned"): its heartbeats never
    list the members, so after a lease TTL they are re-queued, one infrastructure
    failure for the batch."""
    fleet = Fleet(lease_ttl_s=5.0)
    fleet.add_worker("a", ["t"], cpu=1.0)
    fleet.submit([_map(30)])
    _warm(fleet, "a")
    grants = fleet.core.lease("a", 1, fleet.now, max_batch=8)
    assert len(grants) == 8
    fleet.now += 6.0
    known, cancel = fleet.core.heartbeat("a", [], fleet.now)
    assert known and cancel == []
    fleet.check()
    assert [g.task_run.infra_failures for g in grants] == [1] + [0] * 7
    assert all(g.task_run.state == TaskRunState.SCHEDULED for g in grants)
    assert fleet.core.workers["a"].allocated["cpu"] == 0.0
