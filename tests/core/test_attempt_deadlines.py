"""Issue #12 item 4 in the pure core: the coordinator owns attempt deadlines too."""

from __future__ import annotations

import dataclasses
import pickle

from fleetflow_coordinator.core import Outcome, TaskRunState
from fleetflow_coordinator.core.model import EventKind

from .harness import Fleet, items, lit, node


def _timed(spec, timeout_s: float, retries: int = 0):
    return dataclasses.replace(spec, timeout_s=timeout_s, retries=retries)


def test_a_heartbeating_worker_that_never_reports_loses_the_attempt_after_timeout_and_grace():
    fleet = Fleet(lease_ttl_s=5.0)  # grace: twice the TTL, 10 s
    assert fleet.core.attempt_grace_s == 10.0
    fleet.add_worker("silent", ["t"])
    flow = fleet.submit([_timed(node("t", lit("x", 1)), 2.0)], output=0)
    [grant] = fleet.core.lease("silent", 1, fleet.now)
    tr = grant.task_run
    for _ in range(11):  # heartbeats every second, listing the attempt: alive, but no outcome
        fleet.core.heartbeat("silent", [(tr.id, grant.attempt)], fleet.now)
        fleet.advance(1.0)
    assert tr.state == TaskRunState.RUNNING and fleet.now - tr.leased_at == 11.0
    fleet.core.heartbeat("silent", [(tr.id, grant.attempt)], fleet.now)
    fleet.advance(1.0)  # 12 s: past 2 s timeout + 10 s grace
    assert fleet.core.attempts_expired == 1
    assert tr.state == TaskRunState.SCHEDULED and tr.attempt == grant.attempt + 1
    assert tr.infra_failures == 1  # the worker's failure, not the task's
    assert "silent" not in {w for w in [tr.worker_id] if w}
    expired = [e for e in flow.events if e.kind == EventKind.TASK_RUN_LEASE_EXPIRED]
    assert expired and "worker silent sent no outcome within the timeout of 2 s" in (
        expired[-1].message
    )
    # the worker is told to stop it, and its late outcome is fenced
    known, cancel = fleet.core.heartbeat("silent", [(tr.id, grant.attempt)], fleet.now)
    assert known and cancel == [(tr.id, grant.attempt)]
    late = Outcome(tr.id, grant.attempt, value=pickle.dumps(1))
    assert fleet.core.report("silent", [late], fleet.now) == [2]  # REJECTED_STALE
    assert "silent" in fleet.core.workers  # still connected: it heartbeats


def test_an_outcome_in_time_is_not_expired_and_attempts_without_timeout_are_not_watched():
    fleet = Fleet(lease_ttl_s=1.0)
    fleet.add_worker("w", ["t", "u"], cpu=8)
    fleet.submit([_timed(node("t", items("x", [1, 2, 3]), map_=True), 1.0),
                  node("u", lit("x", 1))])  # fmt: skip
    grants = fleet.core.lease("w", 8, fleet.now)
    assert len(grants) == 4 and len(fleet.core._attempt_deadlines) == 3
    for grant in grants:
        fleet.core.report("w", [Outcome(grant.task_run.id, grant.attempt,
                                        value=pickle.dumps(1))], fleet.now)  # fmt: skip
    for _ in range(5):
        fleet.core.heartbeat("w", [], fleet.now)
        fleet.advance(1.0)
    assert fleet.core.attempts_expired == 0
    assert not fleet.core._attempt_deadlines  # popped once due


def test_batch_members_get_deadlines_by_their_place_in_the_batch():
    fleet = Fleet(lease_ttl_s=1.0)  # grace 2 s
    fleet.add_worker("w", ["t"], cpu=1)
    fleet.submit([_timed(node("t", items("x", list(range(4))), map_=True), 1.0)])
    first = fleet.core.lease("w", 1, fleet.now)
    fleet.core.report("w", [Outcome(first[0].task_run.id, first[0].attempt, value=b"x",
                                    duration_s=0.001)], fleet.now)  # fmt: skip
    batch = fleet.core.lease("w", 1, fleet.now, max_batch=8)
    assert len(batch) == 3 and len({g.batch for g in batch}) == 1
    deadlines = sorted(d for d, _, tr, _ in fleet.core._attempt_deadlines
                       if tr.state == TaskRunState.RUNNING)  # fmt: skip
    assert [d - fleet.now for d in deadlines] == [3.0, 4.0, 5.0]  # k * 1 s + 2 s grace
    for _ in range(7):  # 3.5 s, heartbeating every 0.5 s (TTL 1 s)
        fleet.core.heartbeat("w", [(g.task_run.id, g.attempt) for g in batch], fleet.now)
        fleet.advance(0.5)
    assert [g.task_run.state for g in batch] == [
        TaskRunState.SCHEDULED, TaskRunState.RUNNING, TaskRunState.RUNNING
    ]  # fmt: skip


def test_the_deadline_heap_drops_ended_attempts_instead_of_growing():
    fleet = Fleet(lease_ttl_s=10.0)
    fleet.add_worker("w", ["t"], cpu=64)
    n = 20_000
    fleet.submit([_timed(node("t", items("x", list(range(n))), map_=True), 600.0)])
    done = 0
    while done < n:
        grants = fleet.core.lease("w", 64, fleet.now)
        fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, value=b"x") for g in grants],
                          fleet.now)  # fmt: skip
        done += len(grants)
    assert len(fleet.core._attempt_deadlines) <= 8192


def test_restored_running_attempts_get_a_fresh_deadline():
    from fleetflow_coordinator.core import Scheduler
    from fleetflow_coordinator.store import MemoryStore

    from tests.review.helpers import plain, restart, spec_of, submit

    core = Scheduler(lease_ttl_s=1.0)
    now = 1000.0
    core.register_worker("w", {"cpu": 1.0}, frozenset({"t"}), now)
    task = plain("t", x=1)
    task.timeout_seconds = 5.0
    submit(core, spec_of(task, output_node=0), "f1", now)
    [grant] = core.lease("w", 1, now)
    fresh = restart(core, MemoryStore(), now + 100, lease_ttl_s=1.0)
    assert [d - (now + 100) for d, *_ in fresh._attempt_deadlines] == [7.0]  # 5 s + 2 s grace
    assert fresh.task_runs[grant.task_run.id].state == TaskRunState.RUNNING
