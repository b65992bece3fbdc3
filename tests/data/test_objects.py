"""The result store's objects: one contract over a local folder, fsspec memory and S3 (moto)."""

from __future__ import annotations

import pickle

import pytest
from fleetflow.errors import StoredObjectCorrupt, StoredObjectMissing
from fleetflow.store import StoredItems, StoredRef, chunk_frames, encode_frame
from fleetflow.store.codec import frame_size


class Point:
    """A class defined in a test module: pickled by reference or by value, both load here."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x


def _overwrite(store, key: str, data: bytes) -> None:
    with store.fs.open(store.path(key), "wb") as f:
        f.write(data)


def test_values_round_trip_with_their_checksums(object_store):
    values = [
        b"\x00" * 300_000,  # top-level bytes: kept as they are, not pickled
        bytearray(b"abc" * 50_000),  # out-of-band buffer
        {"rows": list(range(1000)), "name": "x"},
        Point(7),
        lambda v: v + 1,  # cloudpickle by value
        None,
    ]
    for i, value in enumerate(values):
        ref = object_store.put(f"runs/f1/{i}.1.r", encode_frame(value))
        assert ref.size == object_store.size_of(ref.key)
        assert len(ref.checksum) == 16
        loaded = object_store.load(ref)
        if callable(value):
            assert loaded(1) == 2
        else:
            assert loaded == value
            assert type(loaded) is type(value)


def test_out_of_band_buffers_come_back_writable():
    from fleetflow.store.codec import decode_frame, materialize

    frame = encode_frame([bytearray(b"x" * 1000), bytearray(b"y" * 10)])
    data = b"".join(bytes(p) for p in frame)
    pos = 0

    def read(n, writable):
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += n
        return bytearray(chunk) if writable else chunk

    decoded, digest = decode_frame(read, len(data))
    value = materialize(decoded)
    value[0][0] = ord("z")  # task code may change its inputs
    assert bytes(value[1]) == b"y" * 10


def test_a_pack_holds_several_payloads_at_their_offsets(object_store):
    refs = object_store.put_pack("runs/f1/9.1.p0", [encode_frame(i * 1000) for i in range(20)])
    assert [r.offset for r in refs] == sorted({r.offset for r in refs})
    assert all(r.key == "runs/f1/9.1.p0" for r in refs)
    assert [object_store.load(r) for r in reversed(refs)] == [i * 1000 for i in reversed(range(20))]


def test_a_list_is_stored_in_chunks_and_each_item_read_from_its_chunk(object_store):
    items = [{"i": i, "pad": "x" * (i % 50)} for i in range(20_000)]
    chunks = []
    for k, (frame, count) in enumerate(chunk_frames(items, 64 << 10)):
        assert frame_size(frame) < 2 * (64 << 10)
        chunks.append((object_store.put(f"runs/f1/5.1.c{k}", frame), count))
    stored = StoredItems(chunks)
    assert len(stored) == 20_000 and len(stored.chunks) > 5
    cache: dict = {}
    for i in (0, 1, 7_777, 19_999):
        assert object_store.load_item(stored[i], cache) == items[i]
    with pytest.raises(IndexError):
        stored[20_000]


def test_chunks_adapt_to_item_sizes():
    big = [b"x" * 300_000] * 5 + [1] * 10_000
    counts = [count for _, count in chunk_frames(big, 1 << 20)]
    assert sum(counts) == len(big)
    assert counts[0] <= 3  # the first item sets the first chunk's length
    assert max(counts) <= 4096


def test_a_missing_object_is_named(object_store):
    ref = StoredRef("runs/f1/404.1.r", 100, b"\x01" * 16)
    with pytest.raises(StoredObjectMissing) as info:
        object_store.load(ref)
    assert "runs/f1/404.1.r" in str(info.value) and "not found" in str(info.value)
    assert info.value.key == "runs/f1/404.1.r"


def test_a_corrupt_object_is_named_with_both_checksums(object_store):
    ref = object_store.put("runs/f1/7.1.r", encode_frame(b"payload" * 10_000))
    data = bytearray(b"".join(object_store.read_raw(ref.key)))
    data[5000] ^= 0xFF
    _overwrite(object_store, ref.key, bytes(data))
    with pytest.raises(StoredObjectCorrupt) as info:
        object_store.load(ref)
    message = str(info.value)
    assert "runs/f1/7.1.r" in message and "checksum mismatch" in message
    assert ref.checksum.hex() in message


def test_a_truncated_object_is_corrupt_not_a_crash(object_store):
    ref = object_store.put("runs/f1/8.1.r", encode_frame(list(range(10_000))))
    _overwrite(object_store, ref.key, b"".join(object_store.read_raw(ref.key))[: ref.size // 2])
    with pytest.raises(StoredObjectCorrupt, match="runs/f1/8.1.r"):
        object_store.load(ref)


def test_something_else_at_the_key_is_corrupt(object_store):
    ref = object_store.put("runs/f1/6.1.r", encode_frame(1))
    _overwrite(object_store, ref.key, pickle.dumps("not a frame").ljust(ref.size, b"\0"))
    with pytest.raises(StoredObjectCorrupt, match="not a fleetflow stored payload"):
        object_store.load(ref)


def test_listing_and_deleting_by_flow_run(object_store):
    for flow in ("a1", "b2"):
        for i in range(3):
            object_store.put(f"runs/{flow}/{i}.1.r", encode_frame(i))
    object_store.put("submit/key1/x", encode_frame(0))
    assert object_store.top_level("runs") == ["a1", "b2"]
    listed = object_store.list("runs/a1")
    assert sorted(o.key for o in listed) == [f"runs/a1/{i}.1.r" for i in range(3)]
    assert all(o.size > 0 for o in listed)
    object_store.delete_prefix("runs/a1")
    assert object_store.list("runs/a1") == []
    assert len(object_store.list("runs/b2")) == 3
    object_store.delete(["runs/b2/0.1.r", "runs/b2/404.1.r"])
    assert len(object_store.list("runs/b2")) == 2
    with pytest.raises(ValueError):
        object_store.delete_prefix("runs")


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "runs/../x/y", "/abs/path", "runs/a", "other/a/b", "runs/a/.hidden"]
)
def test_keys_outside_the_layout_are_refused(tmp_path, key):
    from fleetflow.store import ObjectStore

    store = ObjectStore(str(tmp_path))
    with pytest.raises(ValueError, match="not a valid object key"):
        store.put(key, encode_frame(1))
