"""Leases written as wire bytes are the messages the protobuf API builds, field for field."""

from __future__ import annotations

import pickle

from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.store import StoredItem, StoredItems, StoredRef
from fleetflow_coordinator import convert
from fleetflow_coordinator.core import Arg, ArgKind, NodeSpec, Scheduler
from fleetflow_coordinator.core.model import TaskRun
from fleetflow_coordinator.core.scheduler import LeaseGrant
from fleetflow_coordinator.lease_wire import varint
from fleetflow_coordinator.values import fill_value, inline_limit
from google.protobuf.internal.encoder import _VarintBytes


def _reference(leases, grants, inline_max_bytes=64 << 10, map_inline_bytes=16 << 20):
    """The field-by-field builder ``add_leases`` used before (the protobuf API)."""
    for grant in grants:
        tr = grant.task_run
        node = tr.node
        lease = leases.add(
            task_run_id=tr.id,
            attempt=grant.attempt,
            task_name=node.task_name,
            flow_run_id=tr.flow.id,
            node=node.index,
            index=tr.index,
            split_result=node.split,
            timeout_seconds=node.timeout_s,
            batch=grant.batch,
            inline_max_bytes=inline_limit(node, inline_max_bytes, map_inline_bytes),
        )
        for resource, amount in node.resources.items():
            lease.resources.amounts[resource] = amount
        for (name, value), spec in zip(grant.args, node.args, strict=True):
            arg = lease.args.add(name=name)
            if (
                isinstance(value, list)
                and spec.kind == ArgKind.NODE
                and not spec.mapped
                and tr.flow.nodes[spec.payload].is_map
            ):
                fill_value(arg.value, value, flow_run_id=tr.flow.id, node=spec.payload)
            else:
                fill_value(arg.value, value)


def _ref(i: int) -> StoredRef:
    return StoredRef(f"submit/flow/{i:04d}-chunk", 1000 + i, bytes(range(i, i + 16)), 7 * i)


def _grants():
    """Grants of every argument kind, position and id size the encoder treats apart."""
    core = Scheduler()
    now = 1000.0
    core.register_worker("w", {"cpu": 1e6, "gpu": 8.0}, frozenset(["m", "p"]), now)
    stored = StoredItems([(_ref(1), 200), (_ref(2), 300), (_ref(3), 50)])
    nodes = [
        NodeSpec(
            "m",
            True,
            [
                Arg("x", ArgKind.LITERAL_ITEMS, stored, True),
                Arg("k", ArgKind.LITERAL, pickle.dumps("k" * 300)),
            ],
            {"cpu": 0.5, "gpu": 1.0},
            timeout_s=2.5,
        ),
        NodeSpec("p", False, [Arg("y", ArgKind.LITERAL, pickle.dumps(1))], {}),
        NodeSpec("g", False, [Arg("z", ArgKind.NODE, 0, False)], {"cpu": 1.0}),
    ]
    core.submit("f" * 32, "flow", nodes, now, output_node=0)
    core.flows["f" * 32].nodes[0].mean_duration_s = 1e-5  # batches
    grants = []
    for _ in range(3):
        grants += core.lease("w", 4, now, max_batch=3)
    assert {g.batch for g in grants} - {0}, "some grants are batch members"
    assert {g.task_run.node.task_name for g in grants} == {"m", "p"}
    out = []
    positions = [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 2_999_999]
    for i, grant in enumerate(grants):
        tr = grant.task_run
        args = list(grant.args)
        if tr.node.task_name == "m":
            # Every position size, in every chunk; ids and attempts of every varint size.
            item = stored[[0, 199, 200, 499, 500][i % 5]]
            args[0] = ("x", StoredItem(item.chunk, positions[i % len(positions)]))
            tr.id = [1, 300, 70_000, 2**33, 2**63 + 5][i % 5]
            grant = grant._replace(attempt=[1, 2, 200, 40000][i % 4])
        out.append(grant._replace(args=args))
    # Argument kinds other than bytes and stored items: the protobuf API's path.
    first = next(g for g in out if g.task_run.node.task_name == "m")
    for value in ([b"a", b"bc"], [b"a", _ref(4)], _ref(5), stored, b"", b"z" * 70_000):
        out.append(first._replace(args=[("x", value), ("k", b"")]))
    # A fan-in of the map: small inline, large as node_values.
    flow = core.flows["f" * 32]
    gather = TaskRun(10**6, flow, flow.nodes[2], 0)
    for size in (10, 3 << 20):
        out.append(LeaseGrant(gather, 1, [("z", [b"v" * 100] * (size // 100))]))
    return out


def test_wire_leases_equal_the_api_built_ones():
    grants = _grants()
    for limits in ((64 << 10, 16 << 20), (100, 1000)):
        expected = ws.LeaseTasksResponse(known=True)
        _reference(expected.leases, grants, *limits)
        got = ws.LeaseTasksResponse(known=True)
        convert.add_leases(got.leases, grants, *limits)
        assert len(got.leases) == len(grants)
        for a, b in zip(got.leases, expected.leases, strict=True):
            assert a == b
        # Map fields (resources) have no wire order: upb writes a map in its hash
        # table's order, so only a deterministic (key-sorted) encoding compares.
        assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
            deterministic=True
        )
    kinds = {a.value.WhichOneof("kind") for lease in got.leases for a in lease.args}
    assert kinds == {"pickled", "item", "list", "values", "ref", "items", "node_values"}
    # ReportOutcomesResponse carries leases in another field number: the same messages.
    response = ws.ReportOutcomesResponse(acks=[1])
    convert.add_leases(response.leases, grants[:5])
    reference = ws.ReportOutcomesResponse(acks=[1])
    _reference(reference.leases, grants[:5])
    assert response.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True
    )


def test_varint_is_protobufs():
    for value in [0, 1, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**35 + 3, 2**64 - 1]:
        assert varint(value) == _VarintBytes(value), value
