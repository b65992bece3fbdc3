"""Graph walks never recurse: 10,000-deep chains and deep-and-wide graphs in the pure core.

Issue 11: a failure or a cancel early in a chain of ~1,000 tasks raised
RecursionError inside the coordinator, a 2,000-node map-over-map chain could not
be submitted, and a flow timeout on a 1,500-node chain killed the timer loop.
Each test here runs with the interpreter's default recursion limit (1,000).
"""

from __future__ import annotations

import pickle

from fleetflow_coordinator.core import Outcome, Scheduler, TaskRunState
from fleetflow_coordinator.core.model import FlowRunState

from tests.review.helpers import mapnode, plain, restart, spec_of, submit

from .harness import FakeError, Fleet, items, lit, node, ref

DEPTH = 10_000
NOW = 1000.0


def _chain(depth: int = DEPTH, wide: bool = False) -> list:
    """Plain nodes, each using the one before (and, ``wide``, also the first)."""
    nodes = [node("t", lit("x", 0))]
    for i in range(1, depth):
        args = [ref("x", i - 1)]
        if wide and i > 1:
            args.append(ref("y", 0))
        nodes.append(node("t", *args))
    return nodes


def _lease_one(core: Scheduler, now: float = NOW):
    grants = core.lease("w", 1, now)
    assert grants, "nothing to lease"
    return grants[0]


def _run_to_end(core: Scheduler, now: float = NOW, limit: int = 3 * DEPTH) -> int:
    ran = 0
    for _ in range(limit):
        grants = core.lease("w", 64, now)
        if not grants:
            return ran
        core.report(
            "w", [Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1)) for g in grants], now
        )
        ran += len(grants)
    raise AssertionError("did not settle")


def test_map_over_map_chain_submits_and_a_head_failure_reaches_the_end():
    fleet = Fleet()
    fleet.add_worker("w", ["t"])
    nodes = [node("t", items("x", [1, 2]), map_=True)]
    nodes += [node("t", ref("x", i - 1, mapped=True), map_=True) for i in range(1, DEPTH)]
    flow = fleet.submit(nodes)
    assert all(n.expanded for n in flow.nodes)
    g = _lease_one(fleet.core)
    fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, error=FakeError("x"))], NOW)
    last = flow.nodes[-1]
    assert last.children[g.task_run.index].state == TaskRunState.UPSTREAM_FAILED
    _run_to_end(fleet.core)
    assert flow.state == FlowRunState.FAILED
    assert last.counts[TaskRunState.COMPLETED] == 1
    fleet.check()


def test_failing_the_head_of_a_plain_chain_fails_every_node():
    fleet = Fleet()
    fleet.add_worker("w", ["t"])
    flow = fleet.submit(_chain())
    g = _lease_one(fleet.core)
    fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, error=FakeError("x"))], NOW)
    assert flow.state == FlowRunState.FAILED
    assert sum(n.failed for n in flow.nodes) == DEPTH
    fleet.check()


def test_cancelling_a_deep_and_wide_graph_midway():
    fleet = Fleet()
    fleet.add_worker("w", ["t"])
    flow = fleet.submit(_chain(wide=True))
    for _ in range(5):
        g = _lease_one(fleet.core)
        fleet.core.report("w", [Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1))], NOW)
    _lease_one(fleet.core)  # one running when the cancel comes
    assert fleet.core.cancel_flow(flow.id, NOW) == 1
    assert flow.state == FlowRunState.CANCELLED
    assert flow.nodes[4].children[0].state == TaskRunState.COMPLETED
    assert flow.nodes[5].children[0].state == TaskRunState.CANCELLED
    fleet.check()


def test_flow_timeout_on_a_deep_chain_ends_it_and_the_timer_goes_on():
    fleet = Fleet()
    fleet.add_worker("w", ["t"])
    fleet.n_flows += 1
    flow, _ = fleet.core.submit("deep", "deep", _chain(wide=True), NOW, timeout_s=5.0)
    _lease_one(fleet.core)
    fleet.advance(6.0)
    assert flow.state == FlowRunState.FAILED
    assert flow.first_error[2] == "flow run timed out after 5 s"
    # The timer loop still works: a silent worker is declared lost afterwards.
    fleet.advance(20.0)
    assert "w" not in fleet.core.workers
    fleet.check()


def test_restart_mid_run_of_a_deep_chain_then_run_to_the_end():
    from fleetflow_coordinator.store import MemoryStore

    store = MemoryStore()
    core = Scheduler(lease_ttl_s=1e6)
    core.register_worker("w", {"cpu": 4.0}, frozenset({"t", "m"}), NOW)
    nodes = [plain("t", x=0)]
    nodes += [plain("t", x=("node", i - 1), y=("node", 0)) for i in range(1, DEPTH // 2)]
    nodes += [mapnode("m", x=("items", [1, 2, 3]))]
    nodes += [mapnode("m", x=("node", DEPTH // 2 + i - 1)) for i in range(1, DEPTH // 2)]
    flow = submit(core, spec_of(*nodes), "f", NOW)
    for _ in range(10):
        g = core.lease("w", 1, NOW)[0]
        core.report("w", [Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1))], NOW)
    core = restart(core, store, NOW, lease_ttl_s=1e6)
    core.register_worker("w", {"cpu": 4.0}, frozenset({"t", "m"}), NOW)
    core.validate_state()
    _run_to_end(core, limit=4 * DEPTH)
    flow = core.flows["f"]
    assert flow.state == FlowRunState.COMPLETED, flow.first_error
    core.validate_state()


def test_deep_chain_spec_through_the_protocol_converter():
    core = Scheduler()
    nodes = [plain("t", x=0)] + [plain("t", x=("node", i - 1)) for i in range(1, DEPTH)]
    spec = spec_of(*nodes)
    flow = submit(core, spec, "f", NOW)
    assert flow.nodes[-1].whole_deps == [DEPTH - 2]
    assert core.cancel_flow("f", NOW) == 1
    assert flow.state == FlowRunState.CANCELLED
    core.validate_state()
