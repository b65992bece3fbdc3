"""Stored arguments and results are private: files 0600, folders 0700, whoever writes them.

The coordinator runs with umask 077, but workers and clients write into the
store too, with whatever umask they have (022 on most systems).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module
from fleetflow.store import StoreMarker, encode_frame
from fleetflow.store.objects import MARKER_NAME, ObjectStore
from fleetflow_coordinator import results
from structlog.testing import capture_logs

from tests.e2e.fleet import Fleet

# Loaded as workers load it (by path, under its stem), so task names agree.
FLOWS = Path(__file__).with_name("large_flows.py")
large_flows = load_module(str(FLOWS))


@pytest.fixture
def open_umask():
    """The common umask 022 for this test (and the processes it starts)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(root: Path) -> dict[str, int]:
    """``{relative path: mode}`` of everything under ``root``, the root itself as ``.``."""
    found = {".": _mode(root)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = _mode(path)
    return found


def _private(modes: dict[str, int], root: Path) -> list[str]:
    """What is not 0600 (files) or 0700 (folders) under ``root``."""
    wrong = []
    for name, mode in modes.items():
        want = 0o700 if (root / name).is_dir() else 0o600
        if mode != want:
            wrong.append(f"{name}: {oct(mode)}")
    return wrong


def test_local_objects_are_0600_in_folders_made_0700_whatever_the_umask(tmp_path, open_umask):
    store = ObjectStore(str(tmp_path / "shared" / "store"))
    store.put("runs/f1/1.1.r", encode_frame(b"x" * 100))
    store.put_pack("runs/f1/pack.1", [encode_frame(1), encode_frame(2)])
    with store.raw_writer("submit/s1/arg.0") as out:
        out.write(b"uploaded")
    root = tmp_path / "shared"  # made for the store too: 0700 as well
    modes = _modes(root)
    assert set(modes) == {
        ".", "store", "store/runs", "store/runs/f1", "store/runs/f1/1.1.r",
        "store/runs/f1/pack.1", "store/submit", "store/submit/s1", "store/submit/s1/arg.0",
    }, modes  # fmt: skip
    assert not _private(modes, root), modes


def test_an_existing_folder_is_left_as_it_is(tmp_path, open_umask):
    shared = tmp_path / "team"
    shared.mkdir(mode=0o770)
    os.chmod(shared, 0o770)
    ObjectStore(str(shared)).put("runs/f1/1.1.r", encode_frame(1))
    assert _mode(shared) == 0o770  # the operator's choice for a shared folder
    assert _mode(shared / "runs") == 0o700 and _mode(shared / "runs/f1/1.1.r") == 0o600


def test_the_hosted_store_marker_is_0600_and_an_old_open_root_is_closed(tmp_path, open_umask):
    root = tmp_path / "results"
    marker = StoreMarker.ensure(str(root))
    assert _mode(root) == 0o700 and _mode(root / MARKER_NAME) == 0o600
    os.chmod(root, 0o755)  # as an older version left it
    with capture_logs() as logs:
        results._tighten(str(root))
    assert _mode(root) == 0o700
    assert [e["event"] for e in logs] == ["result_store_mode_tightened"]
    assert StoreMarker.ensure(str(root)).store_id == marker.store_id


def test_a_worker_and_a_client_write_private_objects_into_the_hosted_store(tmp_path, open_umask):
    fleet = Fleet(tmp_path)
    try:
        fleet.start_coordinator()
        fleet.start_worker(module=FLOWS, cpu=1)
        n = 200_000  # over inline_max_bytes (64 KiB): the producer writes it to the store
        with Client(fleet.address) as client:
            assert len(client.submit(large_flows.big_roundtrip, n=n).result(timeout=120)) == n
            blob = bytes(200_000)  # a parameter the client writes to the store
            assert client.submit(large_flows.big_parameter, blob=blob).result(timeout=120) == n
        root = Path(fleet.db).parent / "results"
        modes = _modes(root)
        objects = [n for n in modes if (root / n).is_file() and n != MARKER_NAME]
        assert len(objects) >= 3, modes  # two results (worker) and a parameter (client)
        assert not _private(modes, root), modes
    finally:
        fleet.stop()
