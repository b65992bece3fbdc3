"""Fault classes from other orchestrators' bug reports, on real processes.

Each test names the class it guards. Executions are counted from ledgers the
tasks append to (see fault_flows.py), outside fleetflow.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import wait_until
from .test_durability import _events

FAULT_FLOWS = Path(__file__).with_name("fault_flows.py")
fault_flows = load_module(str(FAULT_FLOWS))
pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_coordinator_restart_during_result_uploads_loses_no_result(fleet, tmp_path):
    """A worker that streams results through the coordinator (another machine)
    finishes attempts while the coordinator is down for longer than a few
    seconds (a restart, an upgrade). The uploads wait for it: each result is
    kept, nothing runs twice, and no infrastructure failure is charged.
    (Before, an upload gave up after three tries within 3.5 s and the finished
    attempt was thrown away as an infrastructure failure.)
    """
    address = fleet.start_coordinator(lease_ttl=5.0, heartbeat=0.5)
    port = int(address.rsplit(":", 1)[1])
    fleet.start_worker(
        "--no-result-store-direct",
        "--spool-dir",
        str(tmp_path / "spool"),
        module=FAULT_FLOWS,
        cpu=2,
    )
    ledger = tmp_path / "starts"
    n, size = 2, 1 << 21
    with Client(address) as client:
        run = client.submit(
            fault_flows.large_results, n=n, ledger=str(ledger), seconds=1.0, size=size
        )
        wait_until(lambda: len(_lines(ledger)) == n, 60, what="both attempts to start")
        fleet.coordinator.kill(signal.SIGKILL)
        fleet.coordinator.popen.wait(10)
        # Down 1 s of task code plus 6 s of uploads knocking on a closed port.
        time.sleep(7.0)
        fleet.start_coordinator(lease_ttl=5.0, heartbeat=0.5, port=port, db=fleet.db)
        assert run.result(timeout=90) == [size] * n
        events = _events(client, run.id)
    starts = collections.Counter(line[0] for line in _lines(ledger))
    assert starts == {str(i): 1 for i in range(n)}, "a finished attempt ran again"
    expired = [e.message for e in events if e.kind == "TASK_RUN_LEASE_EXPIRED"]
    assert not expired, expired
    assert "store_transfer_recovered" in fleet.workers[0].log()


def test_a_lost_worker_charges_one_infrastructure_failure_per_batch_not_per_member(fleet, tmp_path):
    """dask/distributed#5234's class: a worker lost (its whole process group
    SIGKILLed, as a node is) while running lease batches. Only one member of a
    batch runs at a time; the members queued behind it are re-queued without
    being charged, so a few lost workers cannot use up the infrastructure
    budget (max_infra_failures) of task runs whose code never ran.
    """
    address = fleet.start_coordinator(lease_ttl=1.5, heartbeat=0.3)
    doomed = fleet.start_worker(module=FAULT_FLOWS, cpu=2)
    ledger = tmp_path / "starts"
    n = 3000
    with Client(address) as client:
        run = client.submit(fault_flows.quick_map, n=n, ledger=str(ledger))
        wait_until(lambda: len(_lines(ledger)) >= 300, 60, what="the map to be under way")
        os.killpg(doomed.pid, signal.SIGKILL)
        fleet.start_worker(module=FAULT_FLOWS, cpu=2)
        assert run.result(timeout=90) == sum(range(1, n + 1))
        events = _events(client, run.id)
    expired = [e for e in events if e.kind == "TASK_RUN_LEASE_EXPIRED"]
    charged = [e for e in expired if "not counted" not in e.message]
    # Two slots (cpu=2): at most two batches, or two lone attempts, were lost.
    assert 1 <= len(charged) <= 2, [e.message for e in charged]
    assert len(expired) > len(charged), "no batch member was re-queued uncharged"
    assert not [e for e in events if e.kind == "TASK_RUN_FAILED"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_coordinator_and_loses_nothing_it_accepted(fleet, small_disk, capfd):
    """The SQLite database fills its disk (a real ENOSPC, not an injected one):
    the submission that cannot be stored is refused with an error naming the
    full disk (what the coordinator answered before it went away), the
    coordinator exits 1 rather than answer from unstored state,
    and once there is room a restart finds every accepted flow run whole and
    finishes it."""
    from fleetflow._client import Backoff

    db = str(small_disk / "fleetflow.db")
    address = fleet.start_coordinator(db=db)
    port = int(address.rsplit(":", 1)[1])
    ledger = small_disk.parent / "starts"
    accepted, refusal = [], None
    deadline = time.monotonic() + 90
    with Client(address, backoff=Backoff(give_up_s=2.0)) as client:
        while refusal is None and time.monotonic() < deadline:
            try:
                accepted.append(client.submit(fault_flows.quick_map, n=3, ledger=str(ledger)).id)
            except Exception as exc:  # noqa: BLE001 - the refusal under test
                refusal = exc
    assert refusal is not None, "the disk never filled"
    # The coordinator said why before it went away; the error the caller gets names it.
    assert "disk is full" in str(refusal), repr(refusal)
    assert fleet.coordinator.popen.wait(30) == 1
    assert "database or disk is full" in fleet.coordinator.log()
    assert accepted
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    address = fleet.start_coordinator(db=db, port=port)
    fleet.start_worker(module=FAULT_FLOWS, cpu=2)
    with Client(address) as client:
        listed = {r.flow_run_id for r in client.list_flow_runs()}
        # Every accepted one; at most the refused one more (stored just before the crash).
        assert listed >= set(accepted) and len(listed) <= len(accepted) + 1
        for flow_run_id in accepted:
            assert client.get(flow_run_id).state in ("RUNNING", "COMPLETED")
        wait_until(
            lambda: all(client.get(i).state == "COMPLETED" for i in accepted),
            120,
            interval=0.5,
            what="every accepted flow run to complete",
        )
    starts = collections.Counter(line[0] for line in _lines(ledger))
    assert sum(starts.values()) >= 3 * len(accepted)


def test_a_task_process_killed_by_the_oom_killer_is_an_infrastructure_failure(fleet, tmp_path):
    """The kernel's OOM killer SIGKILLs a task process (Celery's "WorkerLostError:
    signal 9", Prefect's crashed flow runs): the worker survives, the attempt
    is re-queued without using the task's retries (it has none), and a task
    run whose process is killed every time ends FAILED after
    max_infra_failures (3) attempts, the error naming the signal, instead of
    looping or hanging."""
    address = fleet.start_coordinator()
    worker = fleet.start_worker(module=FAULT_FLOWS, cpu=2)
    with Client(address) as client:
        once = tmp_path / "once"
        run = client.submit(fault_flows.one_sleep, ledger=str(once), seconds=2.0)
        wait_until(lambda: _lines(once), 60, what="the first attempt")
        os.kill(int(_lines(once)[0][1]), signal.SIGKILL)
        second = run.result(timeout=60)
        assert [int(line[1]) for line in _lines(once)][1:] == [second]
        kinds = [e.kind for e in _events(client, run.id)]
        assert "TASK_RUN_RETRYING" not in kinds and kinds.count("TASK_RUN_LEASE_EXPIRED") == 1

        always = tmp_path / "always"
        run = client.submit(fault_flows.one_sleep, ledger=str(always), seconds=30.0)
        killed: set[str] = set()
        deadline = time.monotonic() + 90
        while client.get(run.id).state == "RUNNING" and time.monotonic() < deadline:
            for _, pid in _lines(always):
                if pid not in killed:
                    killed.add(pid)
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.05)
        with pytest.raises(Exception, match="3 infrastructure failures.*SIGKILL"):
            run.result(timeout=10)
        assert len(_lines(always)) == 3
    assert worker.alive()
