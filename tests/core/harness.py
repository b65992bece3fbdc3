"""Drive the pure Scheduler in tests: a fake clock and in-process fake workers."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from fleetflow_coordinator.core import Arg, ArgKind, NodeSpec, Outcome, Scheduler
from fleetflow_coordinator.core.model import EventKind, FlowRun


class FakeError:
    """Stands in for the TaskError message the edge would pass."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"FakeError({self.message!r})"


def lit(name: str, value: Any) -> Arg:
    return Arg(name, ArgKind.LITERAL, pickle.dumps(value))


def items(name: str, values: list) -> Arg:
    return Arg(name, ArgKind.LITERAL_ITEMS, [pickle.dumps(v) for v in values], mapped=True)


def ref(name: str, node: int, mapped: bool = False) -> Arg:
    return Arg(name, ArgKind.NODE, node, mapped)


def node(
    task: str,
    *args: Arg,
    map_: bool = False,
    retries: int = 0,
    delay: float = 0.0,
    resources: dict[str, float] | None = None,
) -> NodeSpec:
    return NodeSpec(
        task, map_, list(args), resources if resources is not None else {"cpu": 1.0}, retries, delay
    )


class Fleet:
    """A scheduler, a fake clock and helpers that act as workers."""

    def __init__(self, lease_ttl_s: float = 10.0) -> None:
        self.now = 1000.0
        self.core = Scheduler(lease_ttl_s=lease_ttl_s)
        self.n_flows = 0

    def check(self) -> None:
        """The scheduler's invariants hold (called after every step the harness takes)."""
        self.core.validate_state()

    def add_worker(
        self, worker_id: str, tasks: list[str], cpu: float = 4.0, **extra: float
    ) -> None:
        self.core.register_worker(worker_id, {"cpu": cpu, **extra}, frozenset(tasks), self.now)
        self.check()

    def submit(self, nodes: list[NodeSpec], output: int | None = None, key: str = "") -> FlowRun:
        self.n_flows += 1
        flow, _ = self.core.submit(
            f"f{self.n_flows}",
            "flow",
            nodes,
            self.now,
            output_node=output,
            output_literal=pickle.dumps(None),
            idempotency_key=key,
        )
        self.check()
        return flow

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.tick(self.now)
        self.check()

    def run(
        self,
        worker_id: str,
        fns: dict[str, Callable[..., Any]],
        max_rounds: int = 10_000,
        batch: int = 100,
    ) -> int:
        """Lease and execute until nothing is ready; returns attempts run."""
        ran = 0
        for _ in range(max_rounds):
            grants = self.core.lease(worker_id, batch, self.now)
            assert grants is not None, "worker unknown"
            self.check()
            if not grants:
                return ran
            outcomes = []
            for g in grants:
                ran += 1
                tr = g.task_run
                kwargs = {
                    name: (
                        pickle.loads(v) if isinstance(v, bytes) else [pickle.loads(x) for x in v]
                    )
                    for name, v in g.args
                }
                try:
                    result = fns[tr.node.task_name](**kwargs)
                except Exception as exc:  # noqa: BLE001
                    outcomes.append(Outcome(tr.id, g.attempt, error=FakeError(repr(exc))))
                    continue
                if tr.node.split:
                    outcomes.append(
                        Outcome(tr.id, g.attempt, items=[pickle.dumps(x) for x in result])
                    )
                else:
                    outcomes.append(Outcome(tr.id, g.attempt, value=pickle.dumps(result)))
            self.core.report(worker_id, outcomes, self.now)
            self.check()
        raise AssertionError("run() did not settle")

    def result(self, flow: FlowRun) -> Any:
        value = self.core.flow_result(flow)
        if isinstance(value, list):
            return [pickle.loads(v) for v in value]
        return pickle.loads(value)

    @staticmethod
    def kinds(flow: FlowRun) -> list[EventKind]:
        return [e.kind for e in flow.events]
