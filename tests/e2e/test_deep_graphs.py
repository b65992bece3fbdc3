"""Deep graphs with real processes (issue 11, item 2): nothing recurses anywhere.

A 10,000-deep chain, and a deep-and-wide graph (every node also uses the
first): submitted from a real client, failed at the head, cancelled midway,
timed out, restored by a coordinator restarted mid-run (SIGKILL), watched to
its end, and shown by the dashboard's JSON endpoints. Before, the coordinator
raised RecursionError on each of these from about 1,000 nodes on.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

pytestmark = pytest.mark.slow

DEPTH = 10_000
# Loaded as workers load it (by path, under its stem), so task names agree.
MODULE = Path(__file__).with_name("deep_flows.py")
deep_flows = load_module(str(MODULE))


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_failing_the_head_of_a_deep_chain_fails_the_run_and_watch_sees_the_end(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(module=MODULE)
    with Client(address) as client:
        run = client.submit(deep_flows.chain, n=DEPTH, fail=True)
        with pytest.raises(ValueError, match="the head of the chain failed"):
            run.result(timeout=90)
        info = client.get(run.id)
        assert info.state == "FAILED"
        kinds = [event.kind for event in client.watch(run.id)]
        assert kinds[0] == "FLOW_RUN_SUBMITTED" and kinds[-1] == "FLOW_RUN_FAILED"
        assert kinds.count("NODE_FAILED") == DEPTH - 1
        view = _get_json(f"{fleet.http_url}/api/overview?flow_run_id={run.id}")
        assert view["selected"] == run.id
        _get_json(f"{fleet.http_url}/api/flow-runs/{run.id}")
        listed = _get_json(f"{fleet.http_url}/api/flow-runs")["flow_runs"]
        assert [(f["state"], f["nodes"]) for f in listed if f["id"] == run.id] == [
            ("FAILED", DEPTH)
        ]


def test_cancelling_a_deep_and_wide_graph_midway(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(module=MODULE)
    with Client(address) as client:
        run = client.submit(deep_flows.deep_and_wide, n=DEPTH, seconds=30.0)
        with pytest.raises(TimeoutError):
            client.wait(run.id, timeout=1.0)  # the head is leased and sleeping
        assert client.cancel(run.id) >= 1
        assert client.wait(run.id, timeout=30) == "CANCELLED"
        assert client.get(run.id).state == "CANCELLED"


def test_flow_timeout_on_a_deep_chain_and_the_coordinator_keeps_serving(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(module=MODULE)
    with Client(address) as client:
        run = client.submit(deep_flows.timed_chain, n=DEPTH)
        assert client.wait(run.id, timeout=60) == "FAILED"
        # The timer loop survived: a later small run completes.
        assert client.submit(deep_flows.chain, n=3).result(timeout=60) == 2


def test_restart_mid_run_restores_a_deep_graph(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(module=MODULE)
    port = address.rsplit(":", 1)[1]
    with Client(address) as client:
        run = client.submit(deep_flows.deep_and_wide, n=DEPTH, seconds=5.0)
        assert client.get(run.id).state == "RUNNING"
    fleet.coordinator.kill(signal.SIGKILL)
    fleet.coordinator.stop()
    address = fleet.start_coordinator(port=int(port), db=fleet.db)
    with Client(address) as client:
        assert client.get(run.id).state == "RUNNING"
        listed = _get_json(f"{fleet.http_url}/api/flow-runs")["flow_runs"]
        assert [(f["state"], f["nodes"]) for f in listed if f["id"] == run.id] == [
            ("RUNNING", DEPTH)
        ]
        assert client.cancel(run.id) >= 1
        assert client.wait(run.id, timeout=30) == "CANCELLED"
        # A short chain still runs to its end on the restarted coordinator.
        assert client.submit(deep_flows.chain, n=50).result(timeout=60) == 49
