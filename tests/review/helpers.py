"""Shared helpers for the review tests: proto specs through the real converter, restarts."""

from __future__ import annotations

import pickle

from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.convert import node_specs
from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.store import MemoryStore
from fleetflow_coordinator.store.rows import changes_to_batch, snapshot_to_flows

CPU1 = common_pb2.Resources(amounts={"cpu": 1.0})


def spec_of(*nodes: common_pb2.TaskNode, output_node: int | None = None) -> common_pb2.FlowSpec:
    spec = common_pb2.FlowSpec(name="review", nodes=list(nodes))
    if output_node is not None:
        spec.output_node = output_node
    else:
        spec.output_literal = pickle.dumps(None)
    return spec


def plain(task: str, **args) -> common_pb2.TaskNode:
    """A plain node; args: name -> literal value, or ("node", i), or ("nodes", [i, j])."""
    n = common_pb2.TaskNode(task_name=task, resources=CPU1)
    for name, value in args.items():
        _add_arg(n, name, value)
    return n


def _add_arg(n: common_pb2.TaskNode, name: str, value, mapped: bool = False) -> None:
    if isinstance(value, tuple) and value[0] == "node":
        n.args.add(name=name, node=value[1], mapped=mapped)
    elif isinstance(value, tuple) and value[0] == "nodes":
        n.args.add(name=name, nodes=common_pb2.NodeList(nodes=value[1]), mapped=mapped)
    elif isinstance(value, tuple) and value[0] == "items":
        n.args.add(
            name=name,
            literal_items=common_pb2.ValueList(items=[pickle.dumps(v) for v in value[1]]),
            mapped=mapped,
        )
    else:
        n.args.add(name=name, literal=pickle.dumps(value), mapped=mapped)


def mapnode(task: str, **args) -> common_pb2.TaskNode:
    """A map node: every arg given is mapped."""
    n = common_pb2.TaskNode(task_name=task, resources=CPU1, map=True)
    for name, value in args.items():
        _add_arg(n, name, value, mapped=True)
    return n


def submit(core: Scheduler, spec: common_pb2.FlowSpec, flow_id: str, now: float, key: str = ""):
    flow, _ = core.submit(
        flow_id,
        spec.name,
        node_specs(spec),
        now,
        output_node=spec.output_node if spec.HasField("output_node") else None,
        output_literal=spec.output_literal,
        idempotency_key=key,
        spec_blob=spec.SerializeToString(),
        priority=spec.priority,
    )
    return flow


def persist(core: Scheduler, store: MemoryStore) -> None:
    store.write(changes_to_batch(core.drain_changes()))


def restart(core: Scheduler, store: MemoryStore, now: float, **kwargs) -> Scheduler:
    """Store what changed, then build a new Scheduler from the stored rows only."""
    persist(core, store)
    fresh = Scheduler(**kwargs)
    snapshot = store.load()
    fresh.restore(snapshot_to_flows(snapshot), now, snapshot.next_task_run_id)
    return fresh
