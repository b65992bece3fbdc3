"""WorkerSession with real coordinator and worker processes (issue 18).

A worker leases and reports over its session stream; a stream broken under
it (a newer session of its worker id ends it, as a restart or a lost
connection would) loses no outcome and starts no task run twice; a
coordinator with sessions turned off serves the same worker with the unary
calls. Task starts are counted from a ledger the tasks append to.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path

import grpc
from fleetflow import Client
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow.loader import load_module

from .fleet import FLOWS, wait_until

flows = load_module(str(FLOWS))


def _starts(path: Path) -> collections.Counter:
    lines = path.read_text().splitlines() if path.exists() else []
    return collections.Counter(int(line.split()[0]) for line in lines)


def _events(proc, event: str) -> list[dict]:
    found = []
    for line in proc.log().splitlines():
        if f'"{event}"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


async def _replace_session(address: str, worker_id: str) -> None:
    """Open a session of ``worker_id`` (ending the worker's own), then close it."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = ws_grpc.WorkerServiceStub(channel).WorkerSession()
        await call.write(
            ws.WorkerUp(id=1, release_leases=ws.ReleaseLeasesRequest(worker_id=worker_id))
        )  # fmt: skip  (hands back nothing)
        await asyncio.wait_for(call.read(), 5)
        call.cancel()


def test_a_broken_session_loses_no_outcome_and_starts_nothing_twice(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=2.0, heartbeat=0.5)
    fleet.start_worker("--worker-id", "w1", cpu=2)
    ledger = tmp_path / "starts"
    n = 150
    with Client(address) as client:
        run = client.submit(flows.logged_map, n=n, ledger=str(ledger), seconds=0.01)
        broken = 0
        for _ in range(5):  # break the worker's stream while the map runs
            wait_until(lambda b=broken: len(_starts(ledger)) > 10 * (b + 1), 60,
                       what="the map to go on")  # fmt: skip
            asyncio.run(_replace_session(address, "w1"))
            broken += 1
        assert run.result(timeout=90) == [i + 1 for i in range(n)]
    starts = _starts(ledger)
    assert set(starts) == set(range(n))
    assert max(starts.values()) == 1, starts.most_common(3)
    coordinator = fleet.coordinator
    # the worker's session was ended under it each time, and it came back on one
    assert len(_events(coordinator, "worker_session_replaced")) >= broken
    assert not _events(fleet.workers[0], "worker_session_unimplemented")
    assert not _events(fleet.workers[0], "outcomes_not_reported")


def test_a_coordinator_with_sessions_off_serves_the_worker_with_unary_calls(
    fleet, tmp_path, monkeypatch
):
    monkeypatch.setenv("FLEETFLOW_WORKER_SESSIONS", "false")  # the coordinator reads it
    address = fleet.start_coordinator()
    monkeypatch.delenv("FLEETFLOW_WORKER_SESSIONS")
    worker = fleet.start_worker()
    ledger = tmp_path / "starts"
    with Client(address) as client:
        run = client.submit(flows.logged_map, n=20, ledger=str(ledger))
        assert run.result(timeout=60) == [i + 1 for i in range(20)]
    assert max(_starts(ledger).values()) == 1
    wait_until(lambda: _events(worker, "worker_session_unimplemented"), 10,
               what="the worker to say it uses unary calls")  # fmt: skip
    assert not _events(fleet.coordinator, "worker_session_replaced")
