"""A task process's side of the result store: large results out, stored inputs in."""

from __future__ import annotations

import os

import pytest
from fleetflow.errors import StoredObjectCorrupt, StoredObjectMissing
from fleetflow.serde import loads
from fleetflow.store import ObjectStore, StoredItems, StoredRef
from fleetflow_worker._child import run_task
from fleetflow_worker._codec import StoreContext, decode_args, encode_result, error_of, to_outcome


def _context(tmp_path, limit: int = 1000, chunk: int = 4096) -> StoreContext:
    return StoreContext((str(tmp_path / "store"), {}), limit, chunk, "flow1", 7, 1)


def test_a_small_result_stays_inline(tmp_path):
    store = _context(tmp_path)
    kind, data = encode_result("t", {"a": 1}, False, store)
    assert kind == "value" and loads(data) == {"a": 1}
    assert not os.path.exists(tmp_path / "store")


def test_a_large_result_goes_to_the_store_under_its_attempt(tmp_path):
    store = _context(tmp_path)
    kind, ref = encode_result("t", b"x" * 5000, False, store)
    assert kind == "ref" and isinstance(ref, StoredRef)
    assert ref.key.startswith("runs/flow1/7.1.r-")
    assert ObjectStore(str(tmp_path / "store")).load(ref) == b"x" * 5000
    outcome = to_outcome(7, 1, (kind, ref))
    assert outcome.WhichOneof("result") == "ref" and outcome.ref.size == ref.size


def test_a_large_split_result_is_stored_in_chunks_never_whole(tmp_path):
    store = _context(tmp_path, limit=1000, chunk=2000)
    kind, items = encode_result("t", list(range(10_000)), True, store)
    assert kind == "stored_items" and isinstance(items, StoredItems)
    assert len(items) == 10_000 and len(items.chunks) > 5
    assert max(ref.size for ref, _ in items.chunks) < 8000
    args = decode_args([("x", items[9_876])], store, {})
    assert args["x"] == 9_876
    assert decode_args([("x", items)], store)["x"] == list(range(10_000))
    small_kind, small = encode_result("t", [1, 2, 3], True, store)
    assert small_kind == "items" and [loads(b) for b in small] == [1, 2, 3]


def test_stored_inputs_are_read_and_a_fan_in_mixes_inline_and_stored(tmp_path):
    store = _context(tmp_path)
    _, big = encode_result("t", "y" * 3000, False, store)
    _, small = encode_result("t", "z", False, store)
    args = decode_args([("one", big), ("many", [small, big, small])], store)
    assert args["one"] == "y" * 3000
    assert args["many"] == ["z", "y" * 3000, "z"]


def test_a_missing_input_fails_the_attempt_as_infrastructure_naming_it(tmp_path):
    store = _context(tmp_path)
    _, ref = encode_result("t", b"q" * 5000, False, store)
    os.unlink(ObjectStore(str(tmp_path / "store")).path(ref.key))
    payload = run_task("echo", [("x", ref)], False, {"echo": _echo_task()}, store)
    outcome = to_outcome(8, 1, payload)
    assert outcome.infrastructure
    assert ref.key in error_of(payload).message
    assert isinstance(loads(error_of(payload).pickled), StoredObjectMissing)


def test_a_damaged_input_fails_the_attempt_as_infrastructure(tmp_path):
    store = _context(tmp_path)
    _, ref = encode_result("t", b"q" * 5000, False, store)
    path = ObjectStore(str(tmp_path / "store")).path(ref.key)
    with open(path, "r+b") as f:
        f.seek(ref.size - 10)
        f.write(b"!")
    payload = run_task("echo", [("x", ref)], False, {"echo": _echo_task()}, store)
    assert to_outcome(8, 1, payload).infrastructure
    error = error_of(payload)
    assert "checksum mismatch" in error.message and ref.key in error.message
    assert isinstance(loads(error.pickled), StoredObjectCorrupt)


def test_the_task_process_stores_its_large_result(tmp_path):
    store = _context(tmp_path)
    payload = run_task("echo", [("x", b"\x80\x05K\x05.")], False, {"echo": _double()}, store)
    assert payload[0] == "value"
    payload = run_task(
        "echo",
        [("x", encode_result("t", "w" * 4000, False, None)[1])],
        False,
        {"echo": _double()},
        store,
    )
    assert payload[0] == "ref"
    assert ObjectStore(str(tmp_path / "store")).load(payload[1]) == "w" * 8000


def _echo_task():
    from fleetflow import task

    @task
    def echo(x):
        return x

    return echo


def _double():
    from fleetflow import task

    @task
    def echo(x):
        return x * 2

    return echo


@pytest.mark.parametrize("value", [None, 5, "s", b"b" * 10])
def test_without_a_store_everything_is_inline(value):
    kind, data = encode_result("t", value, False, None)
    assert kind == "value" and loads(data) == value
