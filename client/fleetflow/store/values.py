"""A client's side of the result store: large arguments out before submitting, results in.

* :func:`externalize` moves every constant of a flow spec whose pickle is
  larger than the inline limit into the store before the spec is sent (a
  literal argument becomes ``ArgSpec.ref``, a long mapped list
  ``ArgSpec.stored_items`` in chunks, a large constant output
  ``output_ref``), content-addressed under ``submit/<idempotency_key>/``, so
  the same bytes are uploaded once however often they appear, and a
  parameter that a task receives as it is travels once.
* :func:`load_value` rebuilds any ``Value`` a coordinator answers with,
  reading what is stored; :func:`result_ref` describes where it is instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetflow.api.v1 import common_pb2
from fleetflow.serde import loads
from fleetflow.store.access import StoreClient
from fleetflow.store.codec import checksum, item_chunks, pickle_frame
from fleetflow.store.refs import (
    StoredItems,
    StoredRef,
    item_from_proto,
    items_from_proto,
    items_to_proto,
    ref_from_proto,
    ref_to_proto,
)
from fleetflow.store.remote import TransferClient

__all__ = [
    "ResultRef",
    "StoredPiece",
    "externalize",
    "needs_store",
    "largest_constant",
    "load_value",
    "result_ref",
    "submit_prefix",
]


def submit_prefix(idempotency_key: str) -> str:
    """Where a submission's uploads go (the coordinator deletes it with the flow run)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in idempotency_key)[:200]
    return f"submit/{safe or '_'}"


def needs_store(spec: common_pb2.FlowSpec, limit: int) -> bool:
    """Whether any constant of the spec is over the inline limit (bytes)."""
    if len(spec.output_literal) > limit or len(spec.stored_parameters):
        return True
    for node in spec.nodes:
        for arg in node.args:
            source = arg.WhichOneof("source")
            if source == "literal" and len(arg.literal) > limit:
                return True
            if source == "literal_items" and sum(map(len, arg.literal_items.items)) > limit:
                return True
    return False


def largest_constant(spec: common_pb2.FlowSpec) -> int:
    """Bytes of the spec's largest constant (a literal, a mapped list, the output)."""
    sizes = [len(spec.output_literal)]
    for node in spec.nodes:
        for arg in node.args:
            source = arg.WhichOneof("source")
            if source == "literal":
                sizes.append(len(arg.literal))
            elif source == "literal_items":
                sizes.append(sum(map(len, arg.literal_items.items)))
    return max(sizes)


async def externalize(spec: common_pb2.FlowSpec, store: StoreClient, idempotency_key: str) -> None:
    """Move the spec's large constants into the store, in place (see the module docstring).

    ``spec.stored_parameters`` may hold placeholders from recording (no key;
    size and checksum of the parameter's pickle): each is pointed at the
    stored argument with the same bytes, and dropped when no task receives
    the parameter as it is.

    Raises:
        OSError, grpc.aio.AioRpcError: an upload failed.
    """
    limit = store.inline_max_bytes
    prefix = submit_prefix(idempotency_key)
    #: {xxh3 of a pickle: its reference}, so equal bytes are stored once
    by_pickle: dict[bytes, StoredRef] = {}

    async def put_pickle(data: bytes) -> StoredRef:
        digest = checksum([data])
        ref = by_pickle.get(digest)
        if ref is None:
            ref = (await store.put_frames(f"{prefix}/{digest.hex()}", [pickle_frame(data)]))[0]
            by_pickle[digest] = ref
        return ref

    for node in spec.nodes:
        for arg in node.args:
            source = arg.WhichOneof("source")
            if source == "literal" and len(arg.literal) > limit:
                ref = await put_pickle(arg.literal)
                ref_to_proto(ref, arg.ref)  # replaces the literal (oneof)
            elif source == "literal_items":
                pickles = list(arg.literal_items.items)
                if sum(map(len, pickles)) > limit:
                    items = await _put_items(store, prefix, pickles)
                    items_to_proto(items, arg.stored_items)
    if len(spec.output_literal) > limit:
        ref_to_proto(await put_pickle(spec.output_literal), spec.output_ref)
    for name in list(spec.stored_parameters):
        placeholder = spec.stored_parameters[name]
        ref = by_pickle.get(placeholder.checksum)
        if placeholder.key:
            continue
        if ref is None:
            del spec.stored_parameters[name]
        else:
            ref_to_proto(ref, spec.stored_parameters[name])


async def _put_items(store: StoreClient, prefix: str, pickles: Sequence[bytes]) -> StoredItems:
    chunks: list[tuple[StoredRef, int]] = []
    for frame, count in item_chunks(pickles, store.chunk_bytes):
        key = f"{prefix}/{checksum(frame).hex()}"
        chunks.append(((await store.put_frames(key, [frame]))[0], count))
    return StoredItems(chunks)


async def load_value(
    value: common_pb2.Value, store: StoreClient | None, transfer: TransferClient | None
) -> Any:
    """Rebuild a value as the coordinator sent it, reading what is stored.

    Raises:
        fleetflow.errors.StoredObjectError: a stored part is missing or damaged.
        ValueError: the value is stored but there is no store to read it from.
    """
    kind = value.WhichOneof("kind")
    if kind == "pickled":
        return loads(value.pickled)
    if kind == "list":
        return [loads(item) for item in value.list.items]
    if kind is None:
        return None
    if store is None:
        raise ValueError("the result is in the result store, but the coordinator named none")
    if kind == "ref":
        return await store.load(ref_from_proto(value.ref))
    if kind == "item":
        return await store.load_item(item_from_proto(value.item))
    if kind == "items":
        return await store.load_items(items_from_proto(value.items))
    if kind == "values":
        elements: list[Any] = []
        for element in value.values.values:
            elements.append(
                element.pickled
                if element.WhichOneof("kind") == "pickled"
                else ref_from_proto(element.ref)
            )
        return await _load_many(store, elements)
    if kind == "node_values":
        if transfer is None:
            raise ValueError("the result must be paged in, but there is no channel")
        nv = value.node_values
        return await _load_many(
            store, await transfer.node_values(nv.flow_run_id, nv.node, nv.count)
        )
    raise ValueError(f"a result of kind {kind!r}")


async def _load_many(store: StoreClient, elements: list[Any]) -> list[Any]:
    refs = [e for e in elements if isinstance(e, StoredRef)]
    keys = await store.fetch(refs)
    try:
        return await asyncio.to_thread(store.local.load_many, elements)
    finally:
        store.release(keys)


@dataclass(frozen=True)
class StoredPiece:
    """One stored part of a result.

    Attributes:
        url: Where it is: ``file:///...``, ``s3://...``, or ``coordinator:KEY``
            for the store the coordinator hosts on another machine.
        offset: Where the payload starts in that object, bytes.
        size: Its bytes.
        checksum: Its xxh3-128 digest, hex.
    """

    url: str
    offset: int
    size: int
    checksum: str


@dataclass(frozen=True)
class ResultRef:
    """Where a flow run's result is, for a client that does not want the bytes.

    Attributes:
        flow_run_id: The flow run.
        kind: ``"inline"`` (it came with the answer), ``"object"`` (one stored
            value), ``"items"`` (a list stored in chunks), ``"list"`` (a list
            whose elements are inline or stored).
        size: Bytes in all (inline and stored).
        count: Items of a list (None otherwise).
        pieces: The stored parts (chunks for ``"items"``; the stored elements
            for ``"list"``), in order.
        inline: The pickled bytes of a result that came inline (``"inline"``).
    """

    flow_run_id: str
    kind: str
    size: int
    count: int | None
    pieces: tuple[StoredPiece, ...] = ()
    inline: bytes | None = None


async def result_ref(
    flow_run_id: str,
    value: common_pb2.Value,
    store: StoreClient | None,
    transfer: TransferClient | None,
) -> ResultRef:
    """Describe where a result is without reading stored bytes (pages of a fan-in are read)."""

    def piece(ref: StoredRef) -> StoredPiece:
        where = store.where(ref.key) if store is not None else f"coordinator:{ref.key}"
        return StoredPiece(where, ref.offset, ref.size, ref.checksum.hex())

    kind = value.WhichOneof("kind")
    if kind == "pickled":
        return ResultRef(flow_run_id, "inline", len(value.pickled), None, inline=value.pickled)
    if kind == "list":
        items = list(value.list.items)
        return ResultRef(
            flow_run_id,
            "inline",
            sum(map(len, items)),
            len(items),
            inline=common_pb2.ValueList(items=items).SerializeToString(),
        )
    if kind == "ref":
        ref = ref_from_proto(value.ref)
        return ResultRef(flow_run_id, "object", ref.size, None, (piece(ref),))
    if kind == "items":
        stored = items_from_proto(value.items)
        pieces = tuple(piece(r) for r, _ in stored.chunks)
        return ResultRef(flow_run_id, "items", stored.size, len(stored), pieces)
    elements: list[Any]
    if kind == "values":
        elements = [
            e.pickled if e.WhichOneof("kind") == "pickled" else ref_from_proto(e.ref)
            for e in value.values.values
        ]
    elif kind == "node_values" and transfer is not None:
        nv = value.node_values
        elements = await transfer.node_values(nv.flow_run_id, nv.node, nv.count)
    else:
        return ResultRef(flow_run_id, "inline", 0, None)
    size = sum(len(e) if isinstance(e, bytes) else e.size for e in elements)
    pieces = tuple(piece(e) for e in elements if isinstance(e, StoredRef))
    return ResultRef(flow_run_id, "list", size, len(elements), pieces)
