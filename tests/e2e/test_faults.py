"""Fault classes from other orchestrators' bug reports, on real processes.

Each test names the class it guards. Executions are counted from ledgers the
tasks append to (see fault_flows.py), outside fleetflow.
"""

from __future__ import annotations

import collections
import signal
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
