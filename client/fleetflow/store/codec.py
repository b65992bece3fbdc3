"""How payloads are laid out in the result store.

A stored payload is a *frame*::

    header (20 bytes): magic b"FFS1", kind (u8), 3 pad bytes, nbuf (u32), body length (u64)
    nbuf x u64: lengths of the out-of-band buffers
    padding to a multiple of 64
    body: the pickle (kind PICKLE), or the value's bytes (kind BYTES)
    then each buffer, each starting at a multiple of 64 from the frame's start

Kind PICKLE is a protocol-5 pickle whose large buffers (numpy arrays,
``bytearray``, anything exporting ``PickleBuffer``) are written *out of band*:
straight from the object's memory to the file, and read back into their own
writable, aligned buffers, so a 500 MB array is never copied into a pickle.
Kind BYTES holds a top-level ``bytes`` value as it is, for the same reason.

The checksum is xxh3-128 over the whole frame, computed while writing and
verified while reading, part by part, with no second pass.

A stored *list* is a series of frames, one per chunk, each the pickle of a
slice of the list (:func:`chunk_frames`); a reader of item *i* decodes only
its chunk.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cloudpickle
import xxhash

__all__ = [
    "Frame",
    "encode_frame",
    "decode_frame",
    "chunk_frames",
    "checksum",
    "new_hasher",
    "FrameError",
    "PickledItems",
    "encode_items_frame",
    "item_chunks",
    "pickle_frame",
    "frame_size",
    "materialize",
    "MAGIC",
    "ALIGN",
]

MAGIC = b"FFS1"
KIND_PICKLE = 0
KIND_BYTES = 1
#: A chunk of a list whose items were pickled one by one (by a client): the
#: body is the pickle of the list of item pickles; items are unpickled on use.
KIND_ITEMS = 2
#: Buffers start at multiples of this many bytes from the frame's start.
ALIGN = 64
_HEAD = struct.Struct("<4sB3xIQ")
#: Chunks of a stored list hold at most this many items.
MAX_CHUNK_ITEMS = 4096
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})

#: A frame ready to write: its parts in order (header, body, padding, buffers).
Frame = list[bytes | memoryview]


class FrameError(ValueError):
    """Bytes that are not a frame this version wrote (truncated, or another format)."""


def new_hasher() -> Any:
    """A fresh incremental xxh3-128 hasher (``update``, ``digest``)."""
    return xxhash.xxh3_128()


def checksum(parts: Sequence[bytes | memoryview | bytearray]) -> bytes:
    """The xxh3-128 digest (16 bytes) of the concatenated parts."""
    hasher = xxhash.xxh3_128()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def _pad(n: int) -> int:
    return -n % ALIGN


def _plain(value: Any) -> bool:
    """Whether the standard pickler writes ``value`` as cloudpickle would (see serde.dumps)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind in (list, tuple):
        return all(type(x) in _PLAIN for x in value)
    return False


def _dumps_oob(value: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    if _plain(value):
        return pickle.dumps(value, protocol=5), buffers
    # cloudpickle, like fleetflow.serde.dumps: classes and functions of
    # __main__ travel by value; large buffers go out of band.
    body = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return body, buffers


def encode_frame(value: Any) -> Frame:
    """Lay ``value`` out as a frame (see the module docstring).

    Raises:
        TypeError: the value does not pickle (the message names its type).
    """
    if type(value) is bytes:
        head = _HEAD.pack(MAGIC, KIND_BYTES, 0, len(value))
        return [head + b"\0" * _pad(len(head)), value]
    try:
        body, buffers = _dumps_oob(value)
    except Exception as exc:
        raise TypeError(f"a value of type {type(value).__name__} cannot be pickled: {exc}") from exc
    raws = [buffer.raw() for buffer in buffers]
    head = _HEAD.pack(MAGIC, KIND_PICKLE, len(raws), len(body)) + b"".join(
        struct.pack("<Q", raw.nbytes) for raw in raws
    )
    parts: Frame = [head + b"\0" * _pad(len(head)), body]
    if raws:
        parts.append(b"\0" * _pad(len(body)))
        for raw in raws:
            parts.append(raw)
            if _pad(raw.nbytes):
                parts.append(b"\0" * _pad(raw.nbytes))
    return parts


def frame_size(parts: Frame) -> int:
    """Bytes of a frame's parts together."""
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def decode_frame(read: Callable[[int, bool], Any], size: int) -> tuple[Any, bytes]:
    """Read one frame through ``read`` and rebuild its value.

    Args:
        read: ``read(n, writable)`` returns the next ``n`` bytes of the frame:
            ``bytes`` when ``writable`` is false, a ``bytearray`` (a fresh,
            writable buffer for task code) when it is true. Short reads are
            the caller's to turn into errors; they show here as a wrong size.
        size: The frame's size as the reference says, bytes.

    Returns:
        ``(value, digest)``: the value and the xxh3-128 digest of the bytes
        read, for the caller to compare with the reference's checksum
        *before* handing the value on.

    Raises:
        FrameError: the bytes are not a frame, or do not add up to ``size``.
        Exception: what unpickling raises (e.g. a class not importable here).
    """
    hasher = xxhash.xxh3_128()
    if size < _HEAD.size:
        raise FrameError(f"{size} bytes is too short for a frame")
    head = read(_HEAD.size, False)
    hasher.update(head)
    if len(head) != _HEAD.size:
        raise FrameError("truncated header")
    magic, kind, nbuf, body_len = _HEAD.unpack(head)
    if magic != MAGIC or kind not in (KIND_PICKLE, KIND_BYTES, KIND_ITEMS):
        raise FrameError("not a fleetflow stored payload (bad magic or kind)")
    lens_raw = read(8 * nbuf, False) if nbuf else b""
    hasher.update(lens_raw)
    lens = struct.unpack(f"<{nbuf}Q", lens_raw) if len(lens_raw) == 8 * nbuf else None
    if lens is None:
        raise FrameError("truncated buffer table")
    offset = _HEAD.size + 8 * nbuf
    expected = offset + _pad(offset) + body_len
    if nbuf:
        expected += _pad(body_len) + sum(n + _pad(n) for n in lens)
    if expected != size:
        raise FrameError(f"frame says {expected} bytes, the reference {size}")
    pad = read(_pad(offset), False)
    hasher.update(pad)
    body = read(body_len, False)
    hasher.update(body)
    if len(body) != body_len:
        raise FrameError("truncated body")
    if kind == KIND_BYTES:
        return body, hasher.digest()
    if kind == KIND_ITEMS:
        return _Deferred(body, [], items=True), hasher.digest()
    buffers = []
    if nbuf:
        hasher.update(read(_pad(body_len), False))
        for n in lens:
            buffer = read(n, True)
            hasher.update(buffer)
            if len(buffer) != n:
                raise FrameError("truncated buffer")
            buffers.append(buffer)
            if _pad(n):
                hasher.update(read(_pad(n), False))
    digest = hasher.digest()
    return _Deferred(body, buffers), digest


class _Deferred:
    """A frame's pickle, unpickled only once its checksum was verified."""

    __slots__ = ("body", "buffers", "items")

    def __init__(self, body: bytes, buffers: list[bytearray], items: bool = False) -> None:
        self.body = body
        self.buffers = buffers
        self.items = items

    def load(self) -> Any:
        value = pickle.loads(self.body, buffers=self.buffers)
        return PickledItems(value) if self.items else value


class PickledItems:
    """A chunk of item pickles (kind ITEMS): a sequence that unpickles item *i* when read."""

    __slots__ = ("pickles",)

    def __init__(self, pickles: list[bytes]) -> None:
        self.pickles = pickles

    def __len__(self) -> int:
        return len(self.pickles)

    def __getitem__(self, index: int) -> Any:
        return cloudpickle.loads(self.pickles[index])

    def __iter__(self) -> Iterator[Any]:
        return (cloudpickle.loads(p) for p in self.pickles)


def encode_items_frame(pickles: Sequence[bytes]) -> Frame:
    """A chunk frame (kind ITEMS) from items that are already pickled one by one."""
    body = pickle.dumps(list(pickles), protocol=5)
    head = _HEAD.pack(MAGIC, KIND_ITEMS, 0, len(body))
    return [head + b"\0" * _pad(len(head)), body]


def pickle_frame(data: bytes) -> Frame:
    """A frame (kind PICKLE, no out-of-band buffers) around bytes that are already a pickle."""
    head = _HEAD.pack(MAGIC, KIND_PICKLE, 0, len(data))
    return [head + b"\0" * _pad(len(head)), data]


def item_chunks(pickles: Sequence[bytes], target_bytes: int) -> Iterator[tuple[Frame, int]]:
    """Cut already-pickled items into ITEMS chunk frames of about ``target_bytes`` each."""
    start = 0
    size = 0
    for i, data in enumerate(pickles):
        if i > start and (size + len(data) > target_bytes or i - start >= MAX_CHUNK_ITEMS):
            yield encode_items_frame(pickles[start:i]), i - start
            start, size = i, 0
        size += len(data)
    if start < len(pickles):
        yield encode_items_frame(pickles[start:]), len(pickles) - start


def materialize(decoded: Any) -> Any:
    """The value of :func:`decode_frame`'s first result (unpickled now for kind PICKLE).

    Raises:
        Exception: what unpickling raises.
    """
    return decoded.load() if isinstance(decoded, _Deferred) else decoded


def chunk_frames(
    items: Sequence[Any], target_bytes: int, max_items: int = MAX_CHUNK_ITEMS
) -> Iterator[tuple[Frame, int]]:
    """Cut a list into chunk frames of about ``target_bytes`` each.

    Each chunk is the frame of a slice of ``items``; only one chunk's pickle
    exists at a time. The first item alone sets the first chunk's length, and
    each chunk's size corrects the next one's, so items of very different
    sizes still give chunks near the target (an item bigger than the target
    is a chunk of its own).

    Args:
        items: The list (any sequence supporting ``len`` and slicing).
        target_bytes: Aimed size of one chunk, bytes.
        max_items: Most items in one chunk.

    Yields:
        ``(frame, count)`` per chunk, in order.

    Raises:
        TypeError: an item does not pickle.
    """
    n = len(items)
    if n == 0:
        return
    target = max(1, target_bytes)
    probe = frame_size(encode_frame(items[0]))
    k = max(1, min(max_items, target // max(probe, 1)))
    start = 0
    while start < n:
        end = min(n, start + k)
        frame = encode_frame(list(items[start:end]))
        size = frame_size(frame)
        yield frame, end - start
        count = end - start
        start = end
        k = max(1, min(max_items, count * target // max(size, 1)))
