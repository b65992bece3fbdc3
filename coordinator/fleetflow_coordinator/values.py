"""Opaque values the core holds <-> ``Value`` messages, with the result store in mind.

The core holds what an argument or result is without knowing what is inside:
pickled ``bytes`` (inline), a ``StoredRef`` (a payload in the result store),
``StoredItems`` (a list stored in chunks, indexable like a list), a
``StoredItem`` (one item of one), or a list of ``bytes``/``StoredRef`` (a
fan-in). This module turns those into messages so that no message is large:

* a fan-in over a map node whose values add up to more than
  :data:`LIST_INLINE_BYTES` travels as ``node_values`` (the reader pages
  them in with ``ReadNodeValues``), whatever the number of task runs;
* a list with stored elements travels as ``values``;
* the children of big maps get a smaller inline limit
  (:func:`inline_limit`), so the coordinator holds a bounded amount of
  inline results per node (``map_inline_bytes``).
"""

from __future__ import annotations

from typing import Any

from fleetflow.api.v1 import common_pb2
from fleetflow.store import StoredItem, StoredItems, StoredRef
from fleetflow.store.refs import items_to_proto, ref_to_proto

__all__ = [
    "LIST_INLINE_BYTES",
    "MIN_INLINE_BYTES",
    "REF_COST",
    "fill_value",
    "inline_limit",
    "inline_size",
    "value_size",
]

#: A list argument or result whose values add up to more than this many
#: bytes is sent as ``node_values`` to page in, bytes.
LIST_INLINE_BYTES = 1 << 20
#: Results up to this size stay inline however big the map, bytes (a
#: reference costs about as much).
MIN_INLINE_BYTES = 64
#: What one reference costs in a message, bytes (key, sizes, checksum).
REF_COST = 96


def inline_limit(node: Any, inline_max_bytes: int, map_inline_bytes: int) -> int:
    """The inline limit of a lease of ``node``: smaller for the children of big maps.

    A map of N task runs keeps at most about ``map_inline_bytes`` of inline
    results in the coordinator: each child stores a result larger than
    ``map_inline_bytes / N`` (never less than :data:`MIN_INLINE_BYTES`).
    """
    if not node.is_map:
        return inline_max_bytes
    n = max(1, len(node.children))
    return max(MIN_INLINE_BYTES, min(inline_max_bytes, map_inline_bytes // n))


def inline_size(value: Any) -> int:
    """Bytes of a value the coordinator holds inline (references cost nothing here)."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, bytes))
    return 0


def value_size(value: Any) -> int:
    """What a value costs in a message, bytes (about)."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) if isinstance(v, bytes) else REF_COST for v in value)
    return REF_COST


def fill_value(
    out: common_pb2.Value,
    value: Any,
    *,
    flow_run_id: str = "",
    node: int | None = None,
) -> None:
    """Fill a ``Value`` message from a value the core holds.

    Args:
        out: The message to fill.
        value: Bytes, a list of bytes and references, a ``StoredRef``,
            ``StoredItem`` or ``StoredItems``.
        flow_run_id: With ``node``: the list is that map node's results, and
            is sent as ``node_values`` when it is larger than
            :data:`LIST_INLINE_BYTES`.
        node: The map node the list comes from (None: not a node's results).
    """
    if isinstance(value, bytes):
        out.pickled = value
    elif isinstance(value, list):
        if node is not None and value_size(value) > LIST_INLINE_BYTES:
            out.node_values.flow_run_id = flow_run_id
            out.node_values.node = node
            out.node_values.count = len(value)
        elif all(isinstance(v, bytes) for v in value):
            out.list.items.extend(value)
        else:
            add = out.values.values.add
            for v in value:
                if isinstance(v, bytes):
                    add(pickled=v)
                else:
                    ref_to_proto(v, add().ref)
    elif isinstance(value, StoredRef):
        ref_to_proto(value, out.ref)
    elif isinstance(value, StoredItem):
        ref_to_proto(value.chunk, out.item.chunk)
        out.item.position = value.position
    elif isinstance(value, StoredItems):
        items_to_proto(value, out.items)
    else:
        raise TypeError(f"cannot send a value of type {type(value).__name__}")
