"""Lease messages written as protobuf wire bytes, the shared fields of a batch encoded once.

Building a ``Lease`` through the protobuf API costs a Python call per field
and a wrapper object per nested message (``args``, ``value``, ``item``,
``chunk``), about 3 us per lease, once per task run. Here each lease is
written as the bytes of the same message and parsed in C (``add()`` then
``MergeFromString``):

* the fields a batch's members share (task name, flow run, node, batch,
  timeout, inline limit, resources) are encoded once per run of grants of
  one node and batch;
* an argument that is one item of a stored list (a map over a large input)
  is the same bytes for every item of one chunk but its position, so that
  prefix is encoded once per chunk;
* plain pickled arguments are written directly; any other argument (fan-ins,
  stored values, node values) goes through the protobuf API
  (:func:`fleetflow_coordinator.values.fill_value`) as before.

The result is the message :func:`fleetflow_coordinator.convert.add_leases`
always built, field for field (``tests/edge/test_lease_wire.py`` compares
them); the receiver cannot tell the difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetflow.api.v1 import worker_service_pb2
from fleetflow.store import StoredItem
from fleetflow.store.refs import ref_to_proto

from fleetflow_coordinator.core import ArgKind
from fleetflow_coordinator.core.scheduler import LeaseGrant
from fleetflow_coordinator.values import fill_value, inline_limit

__all__ = ["add_leases", "varint"]

#: Field keys (field number << 3 | wire type) of the fields written here.
_LEASE_TASK_RUN_ID = b"\x08"  # Lease.task_run_id = 1, varint
_LEASE_ATTEMPT = b"\x10"  # Lease.attempt = 2, varint
_LEASE_INDEX = b"\x30"  # Lease.index = 6, varint
_LEASE_ARGS = b"\x3a"  # Lease.args = 7, length-delimited
_ARG_NAME = b"\x0a"  # ArgValue.name = 1
_ARG_VALUE = b"\x12"  # ArgValue.value = 2
_VALUE_PICKLED = b"\x0a"  # Value.pickled = 1
_VALUE_ITEM = b"\x22"  # Value.item = 4
_ITEM_CHUNK = b"\x0a"  # StoredItem.chunk = 1
_ITEM_POSITION = b"\x10"  # StoredItem.position = 2, varint

_SMALL = tuple(bytes((v,)) for v in range(128))


def varint(value: int) -> bytes:
    """``value`` (a non-negative int below 2**64) as a protobuf base-128 varint."""
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: key, length, payload."""
    return key + varint(len(payload)) + payload


def _shared(grant: LeaseGrant, inline_max_bytes: int, map_inline_bytes: int) -> bytes:
    """The encoded fields every member of ``grant``'s batch (and node) has in common."""
    tr = grant.task_run
    node = tr.node
    lease = worker_service_pb2.Lease(
        task_name=node.task_name,
        flow_run_id=tr.flow.id,
        node=node.index,
        split_result=node.split,
        timeout_seconds=node.timeout_s,
        batch=grant.batch,
        inline_max_bytes=inline_limit(node, inline_max_bytes, map_inline_bytes),
    )
    amounts = lease.resources.amounts
    for resource, amount in node.resources.items():
        amounts[resource] = amount
    return lease.SerializeToString()


def _item_prefix(name: bytes, item: StoredItem, position_bytes: int) -> bytes:
    """An ``args`` entry for ``item`` up to its position's varint (of that many bytes)."""
    chunk = _field(_ITEM_CHUNK, ref_to_proto(item.chunk).SerializeToString())
    item_len = len(chunk) + 1 + position_bytes
    value = _VALUE_ITEM + varint(item_len) + chunk + _ITEM_POSITION
    value_len = len(value) + position_bytes
    arg = _field(_ARG_NAME, name) + _ARG_VALUE + varint(value_len) + value
    return _LEASE_ARGS + varint(len(arg) + position_bytes) + arg


def _other_arg(grant: LeaseGrant, name: str, value: Any, spec: Any) -> bytes:
    """An ``args`` entry through the protobuf API (fan-ins, stored values...)."""
    tr = grant.task_run
    arg = worker_service_pb2.ArgValue(name=name)
    if (
        isinstance(value, list)
        and spec.kind == ArgKind.NODE
        and not spec.mapped
        and tr.flow.nodes[spec.payload].is_map
    ):
        fill_value(arg.value, value, flow_run_id=tr.flow.id, node=spec.payload)
    else:
        fill_value(arg.value, value)
    return _field(_LEASE_ARGS, arg.SerializeToString())


def add_leases(
    leases: Any,
    grants: Iterable[LeaseGrant],
    inline_max_bytes: int = 64 << 10,
    map_inline_bytes: int = 16 << 20,
) -> None:
    """Append a Lease message per grant to a response's repeated ``leases`` field.

    Args:
        leases: The response's repeated ``leases`` field.
        grants: What the core granted.
        inline_max_bytes: The store's inline limit, bytes.
        map_inline_bytes: Inline results kept per map node, bytes (see
            :func:`~fleetflow_coordinator.values.inline_limit`).
    """
    add = leases.add
    shared_node: Any = None
    shared_batch = -1
    shared = b""
    #: {(argument name, chunk, varint bytes of the position): prefix}
    prefixes: dict[tuple[str, Any, int], bytes] = {}
    names: dict[str, bytes] = {}
    for grant in grants:
        tr = grant.task_run
        node = tr.node
        if node is not shared_node or grant.batch != shared_batch:
            shared = _shared(grant, inline_max_bytes, map_inline_bytes)
            shared_node, shared_batch = node, grant.batch
        parts = [
            shared,
            _LEASE_TASK_RUN_ID,
            varint(tr.id),
            _LEASE_ATTEMPT,
            varint(grant.attempt),
            _LEASE_INDEX,
            varint(tr.index),
        ]
        for (name, value), spec in zip(grant.args, node.args, strict=True):
            kind = type(value)
            if kind is StoredItem:
                position = varint(value.position)
                key = (name, value.chunk, len(position))
                prefix = prefixes.get(key)
                if prefix is None:
                    encoded = names.get(name)
                    if encoded is None:
                        encoded = names[name] = name.encode()
                    prefix = prefixes[key] = _item_prefix(encoded, value, len(position))
                parts.append(prefix)
                parts.append(position)
            elif kind is bytes:  # lengths first: the pickle is copied once, by the join
                encoded = names.get(name)
                if encoded is None:
                    encoded = names[name] = name.encode()
                size = varint(len(value))
                value_len = 1 + len(size) + len(value)
                value_size = varint(value_len)
                arg_len = 2 + len(varint(len(encoded))) + len(encoded) + len(value_size) + value_len
                parts += (
                    _LEASE_ARGS,
                    varint(arg_len),
                    _ARG_NAME,
                    varint(len(encoded)),
                    encoded,
                    _ARG_VALUE,
                    value_size,
                    _VALUE_PICKLED,
                    size,
                    value,
                )
            else:
                parts.append(_other_arg(grant, name, value, spec))
        add().MergeFromString(b"".join(parts))
