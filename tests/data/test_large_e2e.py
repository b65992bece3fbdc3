"""Large data end to end: real coordinator and worker processes, the result store between them.

Every test runs the coordinator with ``max_message_bytes`` = 16 MiB: a message
over that fails its RPC, so a flow that completes proves no message was larger.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import psutil
import pytest
from fleetflow import Client, ResultRef, StoredObjectMissing
from fleetflow.loader import load_module

from tests.e2e.fleet import Fleet, Proc

# Loaded as workers load it (by path, under its stem), so task names agree.
FLOWS = Path(__file__).with_name("large_flows.py")
large_flows = load_module(str(FLOWS))
MESSAGE_LIMIT = 16 << 20
#: The coordinator's resident size stays under this while 200 MB go from
#: task to task and to the client (README, "Limits"): it holds references only.
COORDINATOR_RSS_BOUND = 200 << 20


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETFLOW_MAX_MESSAGE_BYTES", str(MESSAGE_LIMIT))
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


class PeakRss:
    """Samples a process's resident size in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _worker_in(fleet: Fleet, directory: Path, *extra: str) -> Proc:
    """A worker started in its own working directory (nothing shared with the coordinator)."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = Proc.__new__(Proc)
    proc.args = [
        sys.executable,
        "-m",
        "fleetflow_worker",
        "--coordinator",
        fleet.address,
        "--module",
        str(FLOWS),
        "--cpu",
        "1",
        "--spool-dir",
        str(directory / "spool"),
        *extra,
    ]
    proc.log_path = directory / "worker.log"
    import subprocess

    from tests.e2e.fleet import _env

    proc._log = open(proc.log_path, "ab")  # noqa: SIM115 - closed by stop()
    proc.popen = subprocess.Popen(
        proc.args,
        stdout=proc._log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=directory,
        start_new_session=True,
    )
    fleet.procs.append(proc)
    fleet.workers.append(proc)
    return proc


def test_embedded_default_a_200_mb_payload_task_to_task_and_back(fleet):
    fleet.start_coordinator()
    fleet.start_worker("--cpu", "1", module=FLOWS)
    fleet.start_worker("--cpu", "1", module=FLOWS)
    n = 200 * 10**6
    with Client(fleet.address) as client, PeakRss(fleet.coordinator.pid) as rss:
        run = client.submit(large_flows.big_roundtrip, n=n)
        ref = run.result(timeout=240, fetch=False)
        assert isinstance(ref, ResultRef) and ref.kind == "object"
        assert ref.size >= n and ref.pieces[0].url.startswith("file://")
        blob = run.result(timeout=60)
    assert len(blob) == n and blob[:512] == bytes(range(256)) * 2 and blob[-1] == 255
    assert rss.peak < COORDINATOR_RSS_BOUND, f"coordinator peak RSS {rss.peak >> 20} MiB"
    stored = Path(fleet.db).parent / "results" / "runs" / run.id
    assert sum(f.stat().st_size for f in stored.rglob("*") if f.is_file()) >= 2 * n


def test_hosted_store_with_each_worker_in_its_own_directory(fleet, tmp_path):
    fleet.start_coordinator()
    for name in ("a", "b"):
        _worker_in(fleet, tmp_path / name, "--no-result-store-direct")
    n = 40 * 10**6
    with Client(fleet.address) as client:
        client._async._store.direct = False  # the client streams too, as from another machine
        with PeakRss(fleet.coordinator.pid) as rss:
            blob = client.submit(large_flows.big_roundtrip, n=n).result(timeout=240)
            big = bytes(range(256)) * 4096 * 30  # a 30 MiB parameter, uploaded in chunks
            size = client.submit(large_flows.big_parameter, blob=big).result(timeout=240)
    assert len(blob) == n and blob[-1] == 255
    assert size == len(big)
    assert rss.peak < COORDINATOR_RSS_BOUND, f"coordinator peak RSS {rss.peak >> 20} MiB"
    logs = fleet.logs()
    assert "through_coordinator" in logs and '"through_coordinator": true' in logs.replace(
        "True", "true"
    )


def test_s3_compatible_store(fleet, s3_bucket, monkeypatch):
    url, options = s3_bucket
    import json

    fleet.start_coordinator("--result-store", url, "--result-store-options", json.dumps(options))
    fleet.start_worker("--cpu", "1", module=FLOWS)
    with Client(fleet.address) as client:
        run = client.submit(large_flows.big_roundtrip, n=3 * 10**6)
        ref = run.result(timeout=120, fetch=False)
        assert ref.pieces[0].url.startswith(url + "/runs/")
        assert len(run.result(timeout=60)) == 3 * 10**6
        count, size, firsts = client.submit(large_flows.wide_fan_in, n=300).result(timeout=120)
    assert (count, size, firsts) == (300, 3_000_000, [0, 1, 2, 3, 4])
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    assert fs.find(url.removeprefix("s3://") + f"/runs/{run.id}")


# The sizes (a 1,000,000-item upstream list, a 100,000 x 10 KB fan-in) run in CI:
# about 95 s and 55 s on the 2-CPU machine. The variables shrink them for a quick local run.
@pytest.mark.timeout(900)
def test_an_upstream_list_is_mapped_from_its_chunks(fleet):
    fleet.start_coordinator()
    fleet.start_worker("--cpu", "1", module=FLOWS)
    fleet.start_worker("--cpu", "1", module=FLOWS)
    n = int(os.environ.get("FLEETFLOW_TEST_MAP_ITEMS", "1000000"))
    with Client(fleet.address) as client:
        run = client.submit(large_flows.upstream_map, n=n)
        assert run.result(timeout=800) == (n, n * (n - 1) // 2)
        stats = client.get_flow_run_stats(run.id)
    # the upstream's list is in the store in chunks; the coordinator only knows the table
    assert stats.stored_objects > 1 and stats.stored_bytes > n


@pytest.mark.timeout(900)
def test_a_wide_fan_in_of_10_kb_results(fleet):
    fleet.start_coordinator()
    fleet.start_worker("--cpu", "1", module=FLOWS)
    fleet.start_worker("--cpu", "1", module=FLOWS)
    n = int(os.environ.get("FLEETFLOW_TEST_FAN_IN", "100000"))
    with Client(fleet.address) as client, PeakRss(fleet.coordinator.pid) as rss:
        before = psutil.Process(fleet.coordinator.pid).memory_info().rss
        count, size, firsts = client.submit(large_flows.wide_fan_in, n=n).result(timeout=300)
        values = client.submit(large_flows.map_output, n=n).result(timeout=300)
    assert (count, size, firsts) == (n, n * 10_000, [0, 1, 2, 3, 4])
    assert len(values) == n and values[n - 1] == bytes([(n - 1) % 251]) * 10_000
    # the coordinator held references, not the 2 x n x 10 KB
    assert rss.peak - before < n * 10_000 // 4, f"grew {(rss.peak - before) >> 20} MiB"


def test_a_deleted_or_damaged_input_fails_clearly_and_prune_removes_objects(fleet):
    fleet.start_coordinator("--lease-ttl", "3")
    results = Path(fleet.db).parent / "results"
    with Client(fleet.address) as client:
        for damage in ("delete", "corrupt"):
            big = bytes(range(256)) * 4096  # 1 MiB: stored by the client
            run = client.submit(large_flows.big_parameter, blob=big)
            # damage the stored argument while no worker is there to read it
            stored = sorted((results / "submit").rglob("*"), key=lambda p: p.stat().st_mtime)
            target = [p for p in stored if p.is_file()][-1]
            if damage == "delete":
                target.unlink()
            else:
                data = bytearray(target.read_bytes())
                data[-100] ^= 0xFF
                target.write_bytes(bytes(data))
            worker = fleet.start_worker("--cpu", "1", module=FLOWS)
            with pytest.raises(Exception) as info:
                run.result(timeout=120)
            worker.stop()
            message = str(info.value)
            assert target.name in message, message
            assert ("not found" if damage == "delete" else "checksum mismatch") in message
            task_run = client.get_task_run(_task_run_ids(client, run.id)[0])
            # max_infra_failures (3) attempts, each an infrastructure failure naming the object
            assert len(task_run.attempts) == 3
            assert all(a.infrastructure for a in task_run.attempts[:-1])
            assert all(target.name in a.error.message for a in task_run.attempts)
        fleet.start_worker("--cpu", "1", module=FLOWS)
        ok = client.submit(large_flows.big_roundtrip, n=2 * 10**6)
        assert len(ok.result(timeout=60)) == 2 * 10**6
        assert (results / "runs" / ok.id).exists()
        pruned = client.prune(0)
        assert ok.id in pruned
    assert not (results / "runs" / ok.id).exists()
    assert not [p for p in (results / "submit").rglob("*") if p.is_file()]


def _task_run_ids(client, flow_run_id: str) -> list[int]:
    ids = []
    for event in client.watch(flow_run_id):
        if event.task_run_id and event.task_run_id not in ids:
            ids.append(event.task_run_id)
    return ids


def test_a_missing_result_fails_the_client_clearly(fleet):
    fleet.start_coordinator()
    fleet.start_worker("--cpu", "1", module=FLOWS)
    with Client(fleet.address) as client:
        run = client.submit(large_flows.big_roundtrip, n=2 * 10**6)
        ref = run.result(timeout=60, fetch=False)
        os.unlink(ref.pieces[0].url.removeprefix("file://"))
        with pytest.raises(StoredObjectMissing, match="not found"):
            run.result(timeout=10)
