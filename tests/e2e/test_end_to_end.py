"""Issue 2 end to end: a real coordinator and two real worker processes over gRPC."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import FLOWS, ROOT, wait_until

# Load the test flows the way workers and `fleetflow run` do (by path, under the
# file's stem), so exception classes pickled on a worker resolve here too.
flows = load_module(str(FLOWS))
client_only = load_module(str(FLOWS.with_name("client_only.py")))

pytestmark = pytest.mark.slow


def _fleet_of_two(fleet, **coordinator):
    fleet.start_coordinator(**coordinator)
    fleet.start_worker()
    fleet.start_worker()
    return fleet.address


def test_thousand_item_map_returns_every_result_once_in_input_order(fleet):
    address = _fleet_of_two(fleet)
    with Client(address) as client:
        run = client.submit(flows.map_inc, n=1000)
        assert run.result(timeout=120) == [i + 1 for i in range(1000)]
        info = client.get(run.id)
        inc = next(n for n in info.nodes if n.task_name == "flows:inc")
        assert inc.total == 1000 and inc.completed == 1000
        completed = [
            e
            for e in client.watch(run.id)
            if e.kind == "TASK_RUN_COMPLETED" and e.task_name == "flows:inc"
        ]
        assert sorted(e.index for e in completed) == list(range(1000))  # each exactly once


def test_map_over_an_upstream_list_and_over_an_empty_list(fleet):
    address = _fleet_of_two(fleet)
    with Client(address) as client:
        assert client.submit(flows.map_over_upstream, n=50).result(timeout=60) == list(range(1, 51))
        assert client.submit(flows.map_over_upstream, n=0).result(timeout=60) == []


def test_async_tasks_run_on_the_worker_loop(fleet):
    address = _fleet_of_two(fleet)
    with Client(address) as client:
        assert client.submit(flows.async_map, n=200).result(timeout=60) == list(range(200))


def test_task_failing_twice_recovers_with_two_retries(fleet, tmp_path):
    address = _fleet_of_two(fleet)
    ledger = tmp_path / "flaky.ledger"
    with Client(address) as client:
        run = client.submit(flows.flaky_flow, ledger=str(ledger), failures=2, retries=2)
        assert run.result(timeout=60) == "recovered"
    assert len(ledger.read_text().split()) == 3


def test_retries_exhausted_reraises_the_original_exception(fleet, tmp_path):
    address = _fleet_of_two(fleet)
    ledger = tmp_path / "flaky.ledger"
    with Client(address) as client:
        run = client.submit(flows.flaky_flow, ledger=str(ledger), failures=2, retries=1)
        with pytest.raises(flows.FlakyError, match="failure number 2") as info:
            run.result(timeout=60)
        assert any("Remote traceback" in note for note in info.value.__notes__)
        assert client.get(run.id).state == "FAILED"
    assert len(ledger.read_text().split()) == 2


def test_sigkilled_worker_task_reruns_on_the_other_worker(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=2.0, heartbeat=0.5)
    first = fleet.start_worker()
    ledger = tmp_path / "slow.ledger"
    with Client(address) as client:
        run = client.submit(flows.slow_flow, ledger=str(ledger), seconds=2.0)
        wait_until(lambda: ledger.exists() and ledger.read_text().split(), 30, what="first start")
        second = fleet.start_worker()
        time.sleep(1.0)  # let the second worker register
        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        pid = run.result(timeout=60)
        assert time.monotonic() - killed_at < 2.0 + 2.0 + 3.0  # TTL + run time + slack
        starts = ledger.read_text().split()
        assert len(starts) == 2 and starts[0] != starts[1]
        assert pid != first.pid and second.alive()
        kinds = [e.kind for e in client.watch(run.id)]
        assert "TASK_RUN_LEASE_EXPIRED" in kinds and kinds[-1] == "FLOW_RUN_COMPLETED"


def test_task_no_worker_offers_stays_pending_with_a_reason(fleet):
    address = _fleet_of_two(fleet)
    with Client(address) as client:
        run = client.submit(client_only.needs_missing_task)
        events = []
        deadline = time.monotonic() + 20
        for event in client.watch(run.id):
            events.append(event)
            if event.kind == "TASK_RUN_UNSCHEDULABLE" or time.monotonic() > deadline:
                break
        assert events[-1].kind == "TASK_RUN_UNSCHEDULABLE"
        assert "no connected worker offers task 'not_offered_anywhere'" in events[-1].message
        time.sleep(1.0)
        assert client.get(run.id).state == "RUNNING"
        # The fleet is unharmed: another flow still runs.
        assert client.submit(flows.map_inc, n=5).result(timeout=30) == [1, 2, 3, 4, 5]
    assert all(p.alive() for p in fleet.procs)


def test_watcher_resumes_from_its_last_sequence_number(fleet):
    address = _fleet_of_two(fleet)
    with Client(address) as client:
        run = client.submit(flows.map_inc, n=300)
        first_part = []
        for event in client.watch(run.id):
            first_part.append(event)
            if len(first_part) == 100:
                break  # disconnect mid-stream
        run.wait(timeout=60)
        rest = list(client.watch(run.id, after_seq=first_part[-1].seq))
        seqs = [e.seq for e in first_part + rest]
        assert seqs == list(range(1, len(seqs) + 1))
        assert rest[-1].kind == "FLOW_RUN_COMPLETED"
        assert client.get(run.id).last_seq == seqs[-1]


def test_invalid_flow_is_rejected_whole_and_the_coordinator_carries_on(fleet):
    from fleetflow import InvalidFlowError, flow, task

    @task
    def noop(x):
        return x

    @flow
    def bad():
        return noop(1)

    spec = bad.build()
    spec.nodes[0].resources.amounts["cpu"] = -1.0
    address = _fleet_of_two(fleet)
    with Client(address) as client:
        where = rf"nodes\[0\] \({re.escape(noop.name)}\)\.resources\['cpu'\]"
        with pytest.raises(InvalidFlowError, match=where):
            client.submit(spec)
        assert client.list_flow_runs() == []


def test_readme_main_command_runs_the_stdlib_example(tmp_path):
    root = Path(os.__file__).parent / "json"  # a small real corner of the standard library
    out = tmp_path / "summary.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("client", "coordinator", "worker"))
    env.pop("FLEETFLOW_COORDINATOR", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetflow.cli",
            "run",
            "examples/stdlib_stats.py:stdlib_stats",
            "--param",
            f"root={root}",
            "--workers",
            "2",
            "--output",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    summary = json.loads(out.read_text())
    expected = len([p for p in root.rglob("*.py") if "__pycache__" not in p.parts])
    assert summary["files"] == expected and summary["unparsable"] == 0
    assert "largest_modules" in proc.stdout


def test_compose_healthcheck_passes_against_a_real_coordinator(fleet):
    import yaml

    from .fleet import fleetflow

    pki = fleet.tmp / "pki"
    fleetflow("certs", str(pki), "--host", "coordinator")
    address = fleet.start_coordinator(
        "--tls-cert", str(pki / "coordinator.pem"), "--tls-key", str(pki / "coordinator-key.pem")
    )
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    check = compose["services"]["coordinator"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    port = address.rsplit(":", 1)[1]
    script = check[3].replace("localhost:50051", f"localhost:{port}")
    script = script.replace("/run/secrets/ca", str(pki / "ca.pem"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    fleet.coordinator.stop()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert proc.returncode != 0


def test_a_second_coordinator_cannot_take_a_port_in_use(fleet):
    address = fleet.start_coordinator()
    port = int(address.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="cannot listen"):
        fleet.start_coordinator(port=port, db=str(fleet.tmp / "other.db"))


def test_report_outcomes_hands_out_the_next_lease_in_the_same_answer(fleet):
    import grpc
    from fleetflow.api.v1 import common_pb2
    from fleetflow.api.v1 import worker_service_pb2 as ws
    from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
    from fleetflow.serde import dumps

    address = fleet.start_coordinator()
    with Client(address) as client, grpc.insecure_channel(address) as channel:
        stub = ws_grpc.WorkerServiceStub(channel)
        stub.RegisterWorker(
            ws.RegisterWorkerRequest(
                worker_id="raw",
                task_names=["flows:inc"],
                capacity=common_pb2.Resources(amounts={"cpu": 1.0, "memory": 1e9}),
            ),
            timeout=10,
        )
        run = client.submit(flows.map_inc, n=2)
        first = stub.LeaseTasks(
            ws.LeaseTasksRequest(worker_id="raw", max_task_runs=5, wait_seconds=5), timeout=10
        ).leases
        assert len(first) == 1  # one CPU: one at a time
        answer = stub.ReportOutcomes(
            ws.ReportOutcomesRequest(
                worker_id="raw",
                max_new_leases=5,
                outcomes=[
                    ws.Outcome(
                        task_run_id=first[0].task_run_id, attempt=first[0].attempt, value=dumps(1)
                    )
                ],
            ),
            timeout=10,
        )
        assert list(answer.acks) == [ws.OUTCOME_ACK_ACCEPTED]
        assert len(answer.leases) == 1 and answer.leases[0].index != first[0].index
        assert client.get(run.id).state == "RUNNING"
