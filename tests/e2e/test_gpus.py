"""GPU device assignment and warm seats through a real coordinator and worker."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import fleetflow

pytestmark = pytest.mark.slow

GPU_FLOWS = Path(__file__).resolve().parent / "gpu_flows.py"
flows = load_module(str(GPU_FLOWS))


def test_gpu_attempts_get_their_own_devices_and_reuse_warm_processes(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker("--resource", "gpu=2", module=GPU_FLOWS, cpu=2)
    with Client(address) as client:
        run = client.submit(flows.devices, n=6, hold_s=0.3)
        results = run.result(timeout=90)
        task_runs = {e.task_run_id for e in client.watch(run.id) if e.task_run_id}
        histories = [client.get_task_run(t) for t in task_runs]
    assert {r["devices"] for r in results} == {"0", "1"}
    for a, b in itertools.combinations(results, 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"]:
            assert a["devices"] != b["devices"], "two gpu=1 attempts shared a device"
    # Two devices, two warm processes: each ran its device's attempts, keeping its state.
    by_pid: dict[int, list[dict]] = {}
    for r in results:
        by_pid.setdefault(r["pid"], []).append(r)
    assert len(by_pid) == 2, by_pid
    for runs in by_pid.values():
        assert len({r["devices"] for r in runs}) == 1
        assert sorted(r["calls"] for r in runs) == list(range(1, len(runs) + 1))
    seen = {r["devices"] for r in results}
    devices = [a.gpu_devices for h in histories for a in h.attempts if a.gpu_devices]
    assert len(devices) == 6 and {d for (d,) in devices} == seen
    one = next(t for t in task_runs)
    shown = fleetflow("inspect", str(one), "--coordinator", address).stdout
    assert "gpus" in shown, shown
    as_json = json.loads(fleetflow("inspect", str(one), "--coordinator", address, "--json").stdout)
    assert as_json["attempts"][0]["gpu_devices"][0] in ("0", "1")
    workers = json.loads(fleetflow("workers", "--coordinator", address, "--json").stdout)
    assert workers[0]["capacity"]["gpu"] == 2
    assert workers[0]["gpus"] == ["0: GPU", "1: GPU"]  # --resource gpu=2, no NVML: no model
    table = fleetflow("workers", "--coordinator", address).stdout
    assert "0: GPU" in table, table
