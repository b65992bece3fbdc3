"""Issue 3: durable state across coordinator crashes, fenced leases, resumable events.

Executions are counted from ledgers the tasks append to, outside fleetflow.
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import FLOWS, late_results, wait_until

flows = load_module(str(FLOWS))
pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _restart(fleet, port: str) -> str:
    """SIGKILL the coordinator and start a new one on the same port and database."""
    fleet.coordinator.kill(signal.SIGKILL)
    fleet.coordinator.popen.wait(10)
    return fleet.start_coordinator(port=int(port), db=fleet.db)


def test_sigkill_mid_map_completes_with_each_result_once(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=2.0, heartbeat=0.5)
    port = address.rsplit(":", 1)[1]
    fleet.start_worker()
    fleet.start_worker()
    ledger = tmp_path / "starts"
    n = 2000
    with Client(address) as client:
        run = client.submit(flows.logged_map, n=n, ledger=str(ledger), seconds=0.002)
        wait_until(lambda: len(_lines(ledger)) >= 600, 60, what="the map to be under way")
        _restart(fleet, port)
        assert run.result(timeout=120) == [i + 1 for i in range(n)]
    starts = collections.Counter(int(line[0]) for line in _lines(ledger))
    assert set(starts) == set(range(n))
    twice = [x for x, c in starts.items() if c > 1]
    assert max(starts.values()) <= 2, starts.most_common(3)
    assert len(twice) <= 200, f"{len(twice)} items ran twice; only in-flight ones may"


def test_retry_delay_survives_a_restart(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=2.0, heartbeat=0.5)
    port = address.rsplit(":", 1)[1]
    fleet.start_worker()
    ledger = tmp_path / "retry"
    with Client(address) as client:
        run = client.submit(flows.retry_after_delay, ledger=str(ledger))
        wait_until(lambda: len(_lines(ledger)) == 1, 30, what="the first attempt")
        first = float(_lines(ledger)[0][1])
        time.sleep(0.5)
        _restart(fleet, port)
        assert run.result(timeout=60) == "second attempt"
    starts = [float(line[1]) for line in _lines(ledger)]
    assert len(starts) == 2
    assert starts[1] - first >= 3.0, "the retry started before its delay was over"
    assert starts[1] - first < 3.0 + 6.0, "the retry was forgotten for too long"


def test_kill_during_submission_leaves_whole_or_nothing(fleet, tmp_path):
    import threading

    address = fleet.start_coordinator()
    port = address.rsplit(":", 1)[1]
    n = 50_000
    outcome: dict[str, object] = {}

    def submit() -> None:
        from fleetflow._client import Backoff

        try:
            with Client(address, backoff=Backoff(give_up_s=2.0)) as client:
                outcome["handle"] = client.submit(flows.map_inc, n=n, idempotency_key="once")
        except Exception as exc:  # noqa: BLE001 - the coordinator dies mid-call
            outcome["error"] = exc

    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(0.3)
    fleet.coordinator.kill(signal.SIGKILL)
    fleet.coordinator.popen.wait(10)
    thread.join(60)
    address = fleet.start_coordinator(port=int(port), db=fleet.db)
    with Client(address) as client:
        runs = client.list_flow_runs()
        assert len(runs) <= 1
        if runs:
            inc = next(node for node in runs[0].nodes if node.task_name == "flows:inc")
            assert inc.total == n  # whole, never partial
        handle = client.submit(flows.map_inc, n=n, idempotency_key="once")
        assert len(client.list_flow_runs()) == 1
        if runs:
            assert handle.id == runs[0].flow_run_id and not handle.created
        again = client.submit(flows.map_inc, n=n, idempotency_key="once")
        assert again.id == handle.id and len(client.list_flow_runs()) == 1


def test_frozen_worker_late_result_is_rejected(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=1.5, heartbeat=0.3)
    frozen = fleet.start_worker()
    ledger = tmp_path / "stamps"
    with Client(address) as client:
        run = client.submit(flows.stamped, ledger=str(ledger), seconds=2.5)
        wait_until(lambda: len(_lines(ledger)) == 1, 30, what="the first start")
        frozen.kill(signal.SIGSTOP)
        other = fleet.start_worker()
        pid = run.result(timeout=60)
        assert pid != frozen.pid
        final = client.get(run.id)
        frozen.kill(signal.SIGCONT)
        # The run had ended: the late result is rejected and logged, and its
        # log gets no event after FLOW_RUN_COMPLETED (issue 11, item 6).
        late = wait_until(
            lambda: late_results(fleet.coordinator, run.id),
            30,
            what="the late result to be rejected",
        )
        assert late[0]["attempt"] == 1 and "attempt 1 is not current" in late[0]["message"]
        after = client.get(run.id)
        assert after.state == final.state == "COMPLETED"
        events = _events(client, run.id)
        assert events[-1].kind == "FLOW_RUN_COMPLETED"
        assert not [e for e in events if e.kind == "LATE_RESULT_REJECTED"]
        assert client.submit(flows.stamped, ledger=str(ledger), seconds=0).result(timeout=30)
        assert other.alive()


def _events(client, flow_run_id):
    """Every stored event, including those after the terminal one (raw stream)."""
    import grpc
    from fleetflow.api.v1 import coordinator_service_pb2 as pb
    from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
    from fleetflow.events import FlowEvent

    with grpc.insecure_channel(client.address) as channel:
        stub = pb_grpc.CoordinatorServiceStub(channel)
        stream = stub.WatchFlowRun(pb.WatchFlowRunRequest(flow_run_id=flow_run_id), timeout=10)
        return [FlowEvent.from_proto(e) for batch in stream for e in batch.events]


def test_watchers_resume_across_a_restart_without_gaps_or_duplicates(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=2.0, heartbeat=0.5)
    port = address.rsplit(":", 1)[1]
    fleet.start_worker()
    fleet.start_worker()
    ledger = tmp_path / "starts"
    with Client(address) as client:
        run = client.submit(flows.logged_map, n=400, ledger=str(ledger), seconds=0.01)
        seen = []
        for event in client.watch(run.id):
            seen.append(event)
            if len(seen) == 200:
                break
        _restart(fleet, port)
        # The same client reconnects on its own, resuming after its last seq.
        for event in client.watch(run.id, after_seq=seen[-1].seq):
            seen.append(event)
        seqs = [e.seq for e in seen]
        assert seqs == list(range(1, len(seqs) + 1))
        assert seen[-1].kind == "FLOW_RUN_COMPLETED"
        assert run.result(timeout=30) == [i + 1 for i in range(400)]
