"""References to payloads in the result store, and their protocol form.

A reference is all the coordinator keeps of a stored payload: where it is
(``key`` and ``offset``), how big it is and its checksum. These are plain
named tuples so the coordinator can hold a million of them cheaply and treat
them as opaque values; only this module turns them into protocol messages.
"""

from __future__ import annotations

import bisect
import re
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

from fleetflow.api.v1 import common_pb2

__all__ = [
    "StoredRef",
    "StoredItem",
    "StoredItems",
    "ref_to_proto",
    "ref_from_proto",
    "items_to_proto",
    "items_from_proto",
    "item_from_proto",
    "valid_key",
    "result_key",
    "flow_prefix",
]

#: Keys the stores accept: two or more segments of letters, digits, ``._-``,
#: under ``runs/`` (written by workers) or ``submit/`` (uploaded by clients).
_KEY = re.compile(r"(runs|submit)(/[A-Za-z0-9_][A-Za-z0-9._-]{0,199}){2,4}")


class StoredRef(NamedTuple):
    """One payload in the result store.

    Attributes:
        key: Object key under the store's root.
        size: Bytes of the payload.
        checksum: xxh3-128 digest of those bytes (16 bytes).
        offset: Where the payload starts in the object, bytes (packs hold several).
    """

    key: str
    size: int
    checksum: bytes
    offset: int = 0


class StoredItem(NamedTuple):
    """Item ``position`` of a stored chunk: the value map child *i* receives."""

    chunk: StoredRef
    position: int


class StoredItems:
    """A list kept in the store in chunks; indexable like the list it stands for.

    ``len(items)`` is the list's length and ``items[i]`` is a
    :class:`StoredItem` naming item *i*'s chunk, so code that maps over a
    list of pickled items works unchanged over a stored one.

    Args:
        chunks: ``[(ref, count)]`` in order.
    """

    __slots__ = ("chunks", "_starts", "count")

    def __init__(self, chunks: Sequence[tuple[StoredRef, int]]) -> None:
        self.chunks = tuple(chunks)
        starts = []
        total = 0
        for _, count in self.chunks:
            starts.append(total)
            total += count
        #: First index of each chunk, for bisect.
        self._starts = starts
        self.count = total

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> StoredItem:
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"item {index} of a stored list of {self.count}")
        k = bisect.bisect_right(self._starts, index) - 1
        return StoredItem(self.chunks[k][0], index - self._starts[k])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredItems) and other.chunks == self.chunks

    def __hash__(self) -> int:
        return hash(self.chunks)

    def __repr__(self) -> str:
        return f"StoredItems(count={self.count}, chunks={len(self.chunks)})"

    @property
    def size(self) -> int:
        """Bytes of all chunks."""
        return sum(ref.size for ref, _ in self.chunks)


def ref_to_proto(ref: StoredRef, out: common_pb2.StoredRef | None = None) -> common_pb2.StoredRef:
    """Fill (or make) a ``StoredRef`` message."""
    message = common_pb2.StoredRef() if out is None else out
    message.key = ref.key
    message.size = ref.size
    message.checksum = ref.checksum
    message.offset = ref.offset
    return message


def ref_from_proto(message: common_pb2.StoredRef) -> StoredRef:
    """Read a ``StoredRef`` message.

    Raises:
        ValueError: the key is not one a store accepts, or the checksum is not 16 bytes.
    """
    if not valid_key(message.key):
        raise ValueError(f"stored reference: key {message.key!r} is not a valid object key")
    if len(message.checksum) != 16:
        raise ValueError(
            f"stored reference {message.key!r}: checksum is {len(message.checksum)} bytes, not 16"
        )
    return StoredRef(message.key, message.size, message.checksum, message.offset)


def items_to_proto(
    items: StoredItems, out: common_pb2.StoredItems | None = None
) -> common_pb2.StoredItems:
    """Fill (or make) a ``StoredItems`` message."""
    message = common_pb2.StoredItems() if out is None else out
    message.count = items.count
    for ref, count in items.chunks:
        chunk = message.chunks.add(count=count)
        ref_to_proto(ref, chunk.ref)
    return message


def items_from_proto(message: common_pb2.StoredItems) -> StoredItems:
    """Read a ``StoredItems`` message.

    Raises:
        ValueError: a chunk is invalid, or the counts do not add up to ``count``.
    """
    items = StoredItems([(ref_from_proto(c.ref), c.count) for c in message.chunks])
    if items.count != message.count:
        raise ValueError(
            f"stored list: its chunks hold {items.count} items, not the {message.count} it says"
        )
    return items


def item_from_proto(message: common_pb2.StoredItem) -> StoredItem:
    """Read a ``StoredItem`` message.

    Raises:
        ValueError: the chunk reference is invalid.
    """
    return StoredItem(ref_from_proto(message.chunk), message.position)


def valid_key(key: Any) -> bool:
    """Whether ``key`` is a key the stores accept (no ``..``, no absolute paths)."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None and ".." not in key


def flow_prefix(flow_run_id: str) -> str:
    """The key prefix under which a flow run's workers store payloads."""
    return f"runs/{flow_run_id}"


def result_key(flow_run_id: str, task_run_id: int, attempt: int, part: str = "r") -> str:
    """Key of what one attempt stores: ``runs/<flow>/<task_run_id>.<attempt>.<part>-<random>``.

    The attempt is part of the key, so a late attempt never overwrites the
    accepted one's payload; the random suffix keeps a rerun of the same
    attempt (a batch member whose result was lost with a killed process)
    from colliding with what the first run wrote.
    """
    return f"runs/{flow_run_id}/{task_run_id}.{attempt}.{part}-{secrets.token_hex(4)}"
