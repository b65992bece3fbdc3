"""Property test: random fleets never over-commit and always release allocations."""

from __future__ import annotations

import pickle

from fleetflow_coordinator.core import NodeSpec, Outcome, TaskRunState
from fleetflow_coordinator.core.model import TERMINAL_TASK_STATES
from hypothesis import given, settings
from hypothesis import strategies as st

from .harness import FakeError, Fleet, items

actions = st.lists(
    st.one_of(
        st.tuples(st.just("lease"), st.integers(0, 3), st.integers(1, 5), st.sampled_from([1, 4])),
        st.tuples(st.just("complete"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("lose"), st.integers(0, 3)),
        st.tuples(st.just("join"), st.integers(0, 3)),
        st.tuples(st.just("tick"), st.floats(0.1, 4.0)),
        st.tuples(
            st.just("submit"),
            st.integers(0, 6),
            st.sampled_from([0.5, 1.0, 2.0]),
            st.sampled_from([0.0, 1e9]),
        ),
    ),
    max_size=60,
)


def _check(fleet: Fleet) -> None:
    fleet.core.validate_state()
    # A lease batch holds its slot once (its members run one after another).
    tagged = len(
        {
            id(tr.batch) if tr.batch is not None else tr.id
            for tr in fleet.core.task_runs.values()
            if tr.state == TaskRunState.RUNNING and "t1" in tr.node.tags
        }
    )
    assert tagged <= 2 and fleet.core.slots_held.get(("tag", "t1"), 0) == tagged
    for worker in fleet.core.workers.values():
        for resource, total in worker.capacity.items():
            assert worker.allocated.get(resource, 0.0) <= total + 1e-6, (worker, resource)
        expected: dict[str, float] = {}
        batches = set()
        for tr in worker.running.values():
            assert tr.state == TaskRunState.RUNNING and tr.worker_id == worker.worker_id
            if tr.batch is not None:  # a batch holds its resources once
                assert tr.batch.remaining >= 1
                if tr.batch in batches:
                    continue
                batches.add(tr.batch)
            for r, a in tr.node.resources.items():
                expected[r] = expected.get(r, 0.0) + a
        for r in set(expected) | set(worker.allocated):
            assert abs(expected.get(r, 0.0) - worker.allocated.get(r, 0.0)) < 1e-6
    for tr in fleet.core.task_runs.values():
        if tr.state in TERMINAL_TASK_STATES or tr.state != TaskRunState.RUNNING:
            assert tr.worker_id is None or tr.state == TaskRunState.RUNNING


@settings(max_examples=300, deadline=None)
@given(actions, st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=1, max_size=4))
def test_no_overcommit_and_every_allocation_released(steps, cpus):
    fleet = Fleet(lease_ttl_s=3.0)
    fleet.core.set_limit("t1", 2)
    for i, cpu in enumerate(cpus):
        fleet.add_worker(f"w{i}", ["t"], cpu=cpu, memory=4e9)
    held: dict[str, list] = {}
    for step in steps:
        kind = step[0]
        if kind == "submit":
            _, n, cpu, mem = step
            fleet.submit(
                [
                    NodeSpec(
                        "t",
                        True,
                        [items("x", list(range(n)))],
                        {"cpu": cpu, "memory": mem},
                        retries=1,
                        tags=("t1",) if n % 2 else (),
                    )
                ]
            )
        elif kind == "lease":
            wid = f"w{step[1] % len(cpus)}"
            grants = fleet.core.lease(wid, step[2], fleet.now, max_batch=step[3]) or []
            held.setdefault(wid, []).extend(grants)
        elif kind == "complete":
            wid = f"w{step[1] % len(cpus)}"
            if held.get(wid):
                g = held[wid].pop(0)
                outcome = (
                    # Short durations: later leases of the node come in batches.
                    Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1), duration_s=0.001)
                    if step[2]
                    else Outcome(g.task_run.id, g.attempt, error=FakeError("x"), duration_s=0.001)
                )
                fleet.core.report(wid, [outcome], fleet.now)
        elif kind == "lose":
            fleet.core.lose_worker(f"w{step[1] % len(cpus)}", fleet.now, "test")
            held.pop(f"w{step[1] % len(cpus)}", None)
        elif kind == "join":
            wid = f"w{step[1] % len(cpus)}"
            if wid not in fleet.core.workers:
                fleet.add_worker(wid, ["t"], cpu=cpus[step[1] % len(cpus)], memory=4e9)
        else:
            for wid in list(fleet.core.workers):
                fleet.core.heartbeat(wid, [], fleet.now)
            fleet.advance(step[1])
        _check(fleet)
    # Drain: every task run ends and nothing stays allocated.
    for wid in list(fleet.core.workers):
        fleet.core.lose_worker(wid, fleet.now, "drain")
    fleet.add_worker("final", ["t"], cpu=8.0, memory=1e12)
    for _ in range(50):
        fleet.core.heartbeat("final", [], fleet.now)
        fleet.advance(1.0)
        fleet.run("final", {"t": lambda x: x})
    assert all(tr.state in TERMINAL_TASK_STATES for tr in fleet.core.task_runs.values())
    assert all(a < 1e-6 for a in fleet.core.workers["final"].allocated.values())
    assert all(f.terminal for f in fleet.core.flows.values())
