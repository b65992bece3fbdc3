"""Drive a pure Scheduler by hand for the dashboard's tests (no processes, fake clock)."""

from __future__ import annotations

import pickle

from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.core import Arg, ArgKind, NodeSpec, Outcome, Scheduler


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def map_node(task: str, n: int, cpu: float = 1.0, retries: int = 0) -> NodeSpec:
    items = [pickle.dumps(i) for i in range(n)]
    return NodeSpec(
        task, True, [Arg("x", ArgKind.LITERAL_ITEMS, items, mapped=True)], {"cpu": cpu}, retries
    )


def fan_in(task: str, upstream: int) -> NodeSpec:
    return NodeSpec(task, False, [Arg("xs", ArgKind.NODE, upstream)], {"cpu": 1.0})


def error(message: str) -> common_pb2.TaskError:
    return common_pb2.TaskError(
        type="builtins.ValueError",
        message=message,
        traceback=f'Traceback (most recent call last):\n  File "t.py"\nValueError: {message}\n',
    )


def submit(core: Scheduler, clock: Clock, nodes: list[NodeSpec], flow_run_id: str = "fr1"):
    flow, _ = core.submit(flow_run_id, "demo", nodes, clock(), output_literal=pickle.dumps(None))
    return flow


def ok(grant) -> Outcome:
    return Outcome(grant.task_run.id, grant.attempt, value=pickle.dumps(1))


def fail(grant, message: str = "boom") -> Outcome:
    return Outcome(grant.task_run.id, grant.attempt, error=error(message))
