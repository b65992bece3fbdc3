"""Property test (issue 11, item 6): random lives of the pure core keep every invariant.

Hypothesis drives one Scheduler through random sequences of submissions,
leases (single and batched), outcomes (success, code failure, infrastructure
failure, stale), heartbeats, worker loss and joins, cancellations, prunes,
restarts (the drained Changes written to a MemoryStore and restored into a new
Scheduler, as a coordinator restart does) and unschedulable periods (a task
only a large worker can run, which comes and goes). After every step
``validate_state()`` holds (no over-commit, counts, reachability, slots...),
and a flow run's log never grows after its terminal event.
"""

from __future__ import annotations

import pickle

from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.core import Outcome, Scheduler, TaskRunState
from fleetflow_coordinator.store import MemoryStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.review.helpers import mapnode, plain, restart, spec_of, submit

ERR = common_pb2.TaskError(type="E", message="boom")
TASKS = frozenset({"t", "u", "big"})
WORKERS = {"w0": 2.0, "w1": 4.0, "big": 16.0}
KW = {"lease_ttl_s": 3.0, "unschedulable_timeout_s": 20.0, "concurrency_limits": {"tg": 2}}


def _spec(shape: int, n: int) -> common_pb2.FlowSpec:
    if shape == 0:  # a map over literal items, maybe tagged
        m = mapnode("t", x=("items", list(range(n))))
        if n % 2:
            m.tags.append("tg")
        return spec_of(m)
    if shape == 1:  # a plain node split for a map, then a fan-in
        return spec_of(
            plain("u", n=n), mapnode("t", x=("node", 0)), plain("u", xs=("node", 1)), output_node=2
        )
    if shape == 2:  # map over map (item by item), retries on the first
        first = mapnode("t", x=("items", list(range(n))))
        first.retry.retries = 1
        first.retry.retry_delay_seconds = 1.0
        return spec_of(first, mapnode("u", x=("node", 0)))
    big = mapnode("big", x=("items", list(range(n))))  # only the large worker fits
    big.resources.amounts["cpu"] = 8.0
    return spec_of(big, plain("u", xs=("node", 0)))


step = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 3), st.integers(0, 4)),
    st.tuples(
        st.just("lease"),
        st.sampled_from(sorted(WORKERS)),
        st.integers(1, 3),
        st.sampled_from([1, 4]),
    ),
    st.tuples(
        st.just("report"),
        st.sampled_from(sorted(WORKERS)),
        st.sampled_from(["ok", "ok", "err", "infra", "stale"]),
    ),
    st.tuples(st.just("heartbeat"), st.sampled_from(sorted(WORKERS))),
    st.tuples(st.just("lose"), st.sampled_from(sorted(WORKERS))),
    st.tuples(st.just("join"), st.sampled_from(sorted(WORKERS))),
    st.tuples(st.just("cancel_flow"), st.integers(0, 5)),
    st.tuples(st.just("cancel_task_run"), st.integers(1, 40)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 2.0, 5.0, 25.0])),
    st.tuples(st.just("prune")),
    st.tuples(st.just("restart")),
)


class World:
    """The core, its store, and what each fake worker holds."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.store = MemoryStore()
        self.core = Scheduler(**KW)
        self.held: dict[str, list] = {w: [] for w in WORKERS}
        self.ended: dict[str, int] = {}
        self.flows = 0
        for wid in ("w0", "w1"):
            self.join(wid)

    def join(self, wid: str, running: list[tuple[int, int]] = ()) -> None:
        self.core.register_worker(
            wid, {"cpu": WORKERS[wid]}, TASKS, self.now, running=list(running)
        )

    def step(self, action: tuple) -> None:
        kind, core = action[0], self.core
        if kind == "submit":
            self.flows += 1
            submit(core, _spec(action[1], action[2]), f"f{self.flows}", self.now)
        elif kind == "lease":
            grants = core.lease(action[1], action[2], self.now, max_batch=action[3])
            self.held[action[1]].extend(grants or [])
        elif kind == "report":
            self.report(action[1], action[2])
        elif kind == "heartbeat":
            wid = action[1]
            running = [(g.task_run.id, g.attempt) for g in self.held[wid]]
            known, cancel = core.heartbeat(wid, running, self.now)
            if not known:
                self.held[wid] = []
            drop = set(cancel)
            self.held[wid] = [g for g in self.held[wid] if (g.task_run.id, g.attempt) not in drop]
        elif kind == "lose":
            core.lose_worker(action[1], self.now, "test")
            self.held[action[1]] = []
        elif kind == "join":
            if action[1] not in core.workers:
                self.join(action[1])
        elif kind == "cancel_flow":
            core.cancel_flow(f"f{action[1]}", self.now)
        elif kind == "cancel_task_run":
            core.cancel_task_run(action[1], self.now)
        elif kind == "tick":
            self.now += action[1]
            for wid in list(core.workers):  # live workers keep beating; "lose" is explicit
                if wid != "big" or action[1] < 5.0:
                    core.heartbeat(
                        wid, [(g.task_run.id, g.attempt) for g in self.held[wid]], self.now
                    )
            core.tick(self.now)
        elif kind == "prune":
            for flow_id in core.prune(self.now + 1.0):
                self.ended.pop(flow_id, None)
        else:
            self.restart()

    def report(self, wid: str, how: str) -> None:
        if not self.held[wid]:
            return
        g = self.held[wid].pop(0)
        tr = g.task_run
        if how == "stale":
            outcome = Outcome(tr.id, g.attempt - 1, value=pickle.dumps(0))
        elif how == "err":
            outcome = Outcome(tr.id, g.attempt, error=ERR, duration_s=0.001)
        elif how == "infra":
            outcome = Outcome(tr.id, g.attempt, error=ERR, infrastructure=True)
        elif tr.node.split:
            outcome = Outcome(tr.id, g.attempt, items=[pickle.dumps(i) for i in range(2)])
        else:
            outcome = Outcome(tr.id, g.attempt, value=pickle.dumps(1), duration_s=0.001)
        self.core.report(wid, [outcome], self.now)

    def restart(self) -> None:
        workers = {wid for wid in self.core.workers}
        self.core = restart(self.core, self.store, self.now, **KW)
        for wid in workers:
            # Batch members are not re-attached (each would count its resources
            # again): they wait as orphans and are fenced like any lost attempt.
            singles = [g for g in self.held[wid] if not g.batch]
            self.join(wid, [(g.task_run.id, g.attempt) for g in singles])
        self.held = {
            wid: [
                type(g)(self.core.task_runs[g.task_run.id], g.attempt, g.args, g.batch)
                for g in gs
                if g.task_run.id in self.core.task_runs
            ]
            for wid, gs in self.held.items()
        }

    def check(self) -> None:
        self.core.validate_state()
        for flow in self.core.flows.values():
            if flow.terminal:
                before = self.ended.setdefault(flow.id, len(flow.events))
                assert len(flow.events) == before, f"{flow.id}: events after its end"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=50))
def test_random_lives_keep_every_invariant(actions):
    world = World()
    for action in actions:
        world.step(action)
        world.check()
    # Everything still ends: a worker that fits everything runs what is left.
    world.step(("restart",))
    world.check()
    core = world.core
    for wid in list(core.workers):
        core.lose_worker(wid, world.now, "drain")
    core.register_worker("final", {"cpu": 64.0}, TASKS, world.now)
    for _ in range(40):
        world.now += 2.0
        core.heartbeat("final", [], world.now)
        core.tick(world.now)
        for _ in range(20):
            grants = core.lease("final", 100, world.now, max_batch=4) or []
            if not grants:
                break
            outcomes = [
                Outcome(g.task_run.id, g.attempt, items=[pickle.dumps(1)])
                if g.task_run.node.split
                else Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1))
                for g in grants
            ]
            core.report("final", outcomes, world.now)
        world.check()
    assert all(f.terminal for f in core.flows.values())
    assert all(tr.state != TaskRunState.RUNNING for tr in core.task_runs.values())
    assert all(a < 1e-6 for a in core.workers["final"].allocated.values())
