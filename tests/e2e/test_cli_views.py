"""``fleetflow workers`` and ``fleetflow inspect`` against a real coordinator and workers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import FLOWS, ROOT, _env, fleetflow, wait_until

pytestmark = pytest.mark.slow

flows = load_module(str(FLOWS))


def test_workers_and_inspect_as_tables_and_json(fleet, tmp_path):
    address = fleet.start_coordinator()
    first = fleet.start_worker()
    fleet.start_worker(cpu=1)
    with Client(address) as client:
        wait_until(lambda: len(client.list_workers()) == 2, 30, what="two workers")
        run = client.submit(flows.map_inc, n=40)
        run.wait(timeout=60)
        ledger = tmp_path / "flaky.ledger"
        failed = client.submit(flows.flaky_flow, ledger=str(ledger), failures=5, retries=0)
        assert failed.wait(timeout=60) == "FAILED"

    workers = json.loads(fleetflow("workers", "--coordinator", address, "--json").stdout)
    assert sorted(w["capacity"]["cpu"] for w in workers) == [1.0, 2.0]
    assert {w["pid"] for w in workers} >= {first.pid}
    for w in workers:
        assert w["running"] == 0 and w["allocated"].get("cpu", 0.0) == 0.0
        assert 0 <= w["heartbeat_age_s"] < 5 and "flows:inc" in w["task_names"]
    table = fleetflow("workers", "--coordinator", address).stdout
    assert "2 workers" in table and all(w["worker_id"] in table for w in workers)
    assert "cpu used/offered" in table and "0 / 2" in table

    data = json.loads(fleetflow("inspect", run.id, "--coordinator", address, "--json").stdout)
    assert data["state"] == "COMPLETED" and data["error"] is None
    inc = next(n for n in data["nodes"] if n["task_name"] == "flows:inc")
    assert inc["map"] and inc["total"] == 40 and inc["completed"] == 40 and inc["finished"] == 40
    assert data["total"] == 41 and data["finished"] == 41 and data["duration_s"] > 0
    view = fleetflow("inspect", run.id, "--coordinator", address).stdout
    assert "COMPLETED" in view and "inc (map)" in view and "40/40" in view

    done = fleetflow("inspect", failed.id, "--coordinator", address, "--json", check=False)
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["type"].endswith("FlakyError") and error["message"] == "failure number 1"
    assert any("Remote traceback" in note for note in error["notes"])
    done = fleetflow("inspect", failed.id, "--coordinator", address, check=False)
    assert done.returncode == 1 and "FlakyError: failure number 1" in done.stdout

    missing = fleetflow("inspect", "nope", "--coordinator", address, check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_fleetflow_run_prints_the_dashboard_url(tmp_path):
    env = {**_env()}
    env.pop("FLEETFLOW_COORDINATOR", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetflow.cli",
            "run",
            f"{FLOWS}:map_inc",
            "-p",
            "n=3",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dashboard: http://127.0.0.1:" in done.stderr
    assert "[1, 2, 3]" in done.stdout
