"""A worker holds at most ``max_leases_per_worker`` slots, whatever its task runs request.

Capacity alone bounds nothing for task runs that request no resources
(``resources={}`` or ``{"cpu": 0}``): without the count, a worker with one
CPU leased a whole map of 500 in one call (issue 12, item 3).
"""

from __future__ import annotations

import pickle

from fleetflow_coordinator.core import Ack, NodeSpec, Outcome
from fleetflow_coordinator.core.scheduler import MAX_LEASES_PER_WORKER, LeaseGrant

from .harness import Fleet, items


def _map(n: int, resources: dict[str, float]) -> NodeSpec:
    return NodeSpec("t", True, [items("x", list(range(n)))], resources)


def _ok(grant: LeaseGrant, duration_s: float = 0.001) -> Outcome:
    return Outcome(grant.task_run.id, grant.attempt, value=pickle.dumps(1), duration_s=duration_s)


def test_task_runs_without_resources_are_bounded_by_the_slot_count():
    fleet = Fleet()
    fleet.core.max_leases_per_worker = 100
    fleet.add_worker("a", ["t"], cpu=1.0)
    fleet.add_worker("b", ["t"], cpu=1.0)
    fleet.submit([_map(500, {})])
    grants = fleet.core.lease("a", 10_000, fleet.now)
    assert len(grants) == 100
    assert fleet.core.lease("a", 10_000, fleet.now) == []  # full until something ends
    fleet.check()
    # Another worker has its own slots.
    assert len(fleet.core.lease("b", 10_000, fleet.now)) == 100
    # Each outcome frees a slot.
    assert fleet.core.report("a", [_ok(g) for g in grants[:7]], fleet.now) == [Ack.ACCEPTED] * 7
    assert len(fleet.core.lease("a", 10_000, fleet.now)) == 7
    assert fleet.core.workers["a"].slots == 100
    fleet.check()


def test_the_cap_applies_to_every_shape_and_a_batch_is_one_slot():
    fleet = Fleet()
    fleet.core.max_leases_per_worker = 3
    fleet.add_worker("a", ["t"], cpu=64.0)
    fleet.submit([_map(400, {"cpu": 0.5})])  # capacity alone would allow 128
    (warm,) = fleet.core.lease("a", 1, fleet.now, max_batch=64)
    assert fleet.core.report("a", [_ok(warm)], fleet.now) == [Ack.ACCEPTED]
    grants = fleet.core.lease("a", 10_000, fleet.now, max_batch=64)
    batches = {g.batch for g in grants}
    assert len(batches) == 3 and 0 not in batches  # three slots, each a batch of many
    assert len(grants) > 3
    worker = fleet.core.workers["a"]
    assert worker.slots == 3 and worker.allocated["cpu"] == 1.5
    fleet.check()
    # A batch's slot is free only once its last member ends.
    first = [g for g in grants if g.batch == min(batches)]
    fleet.core.report("a", [_ok(g) for g in first[:-1]], fleet.now)
    assert fleet.core.lease("a", 10_000, fleet.now, max_batch=64) == []
    fleet.core.report("a", [_ok(first[-1])], fleet.now)
    assert worker.slots == 2
    assert len({g.batch for g in fleet.core.lease("a", 10_000, fleet.now, max_batch=64)}) == 1
    fleet.check()


def test_the_default_is_a_workers_default_concurrency_and_reattached_attempts_count():
    assert MAX_LEASES_PER_WORKER == 1000
    fleet = Fleet()
    fleet.add_worker("a", ["t"], cpu=1.0)
    fleet.submit([_map(1500, {"cpu": 0.0})])
    grants = fleet.core.lease("a", 10_000, fleet.now)
    assert len(grants) == MAX_LEASES_PER_WORKER
    # Registering again (a lost connection) re-attaches what it holds, once.
    held = [(g.task_run.id, g.attempt) for g in grants]
    fleet.core.register_worker("a", {"cpu": 1.0}, frozenset({"t"}), fleet.now, running=held)
    assert fleet.core.workers["a"].slots == MAX_LEASES_PER_WORKER
    assert fleet.core.lease("a", 10_000, fleet.now) == []
    fleet.check()
