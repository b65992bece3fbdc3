"""Issue 16: hot standby coordinators on one PostgreSQL database, with real processes.

Two coordinators share a database created for the test (and dropped after);
one is active, the other stands by. Workers are given both addresses and
follow the active one. Each task execution writes ``item token`` to a ledger
outside fleetflow and returns the token, so the test can tell which execution's
result was accepted.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from fleetflow import Client
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc
from fleetflow.loader import load_module
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .. import pg
from .fleet import Proc, wait_until

FLOWS = Path(__file__).resolve().parent / "standby_flows.py"
flows = load_module(str(FLOWS))
pytestmark = pytest.mark.slow

LEASE_S = 2.0


class Coordinator:
    def __init__(self, tmp: Path, name: str, dsn: str, port: int = 0) -> None:
        self.name = name
        self.port_file = tmp / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "fleetflow_coordinator",
                "--listen",
                f"127.0.0.1:{port}",
                "--port-file",
                str(self.port_file),
                "--db",
                dsn,
                "--http",
                "off",
                "--lease-ttl",
                "3",
                "--heartbeat-interval",
                "0.5",
                "--leader-lease",
                str(LEASE_S),
            ],
            tmp / f"{name}.log",
        )
        wait_until(
            lambda: self.port_file.exists() or not self.proc.alive(), 60, what=f"{name}'s port"
        )
        assert self.proc.alive(), self.proc.log()
        self.address = f"127.0.0.1:{self.port_file.read_text().strip()}"

    def health(self) -> str:
        try:
            with grpc.insecure_channel(self.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            return exc.code().name

    def wait_health(self, status: str, timeout: float = 60) -> float:
        started = time.monotonic()
        wait_until(lambda: self.health() == status, timeout, 0.05, f"{self.name} {status}")
        return time.monotonic() - started

    def refusal(self) -> tuple[str, str]:
        with grpc.insecure_channel(self.address) as channel:
            try:
                cs_grpc.CoordinatorServiceStub(channel).ListFlowRuns(
                    cs.ListFlowRunsRequest(), timeout=5
                )
            except grpc.RpcError as exc:
                return exc.code().name, exc.details()
        return "OK", ""


def _worker(tmp: Path, name: str, addresses: str) -> Proc:
    return Proc(
        [
            sys.executable,
            "-m",
            "fleetflow_worker",
            "--coordinator",
            addresses,
            "--module",
            str(FLOWS),
            "--cpu",
            "2",
        ],
        tmp / f"{name}.log",
    )


def _ledger(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(int(x), t) for x, t in (line.split() for line in path.read_text().splitlines())]


def _completed_events(client: Client, flow_run_id: str) -> collections.Counter:
    """TASK_RUN_COMPLETED events per task run, from the stored event log (raw stream)."""
    from fleetflow.events import FlowEvent

    stream = client._stub.WatchFlowRun(cs.WatchFlowRunRequest(flow_run_id=flow_run_id), timeout=60)
    events = [FlowEvent.from_proto(e) for batch in stream for e in batch.events]
    return collections.Counter(e.task_run_id for e in events if e.kind == "TASK_RUN_COMPLETED")


def _check_each_result_once(result, ledger: Path, n: int) -> collections.Counter:
    assert [x for x, _ in result] == list(range(n)), "every item's result exactly once, in order"
    runs = _ledger(ledger)
    executed = set(runs)
    assert all((x, token) in executed for x, token in result), "a result no execution produced"
    return collections.Counter(x for x, _ in runs)


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def test_sigkill_of_the_active_coordinator_mid_map_the_standby_finishes_it(tmp_path, procs):
    n = 20_000
    ledger = tmp_path / "ledger"
    with pg.database("failover") as dsn:
        a = Coordinator(tmp_path, "a", dsn)
        procs.append(a.proc)
        a.wait_health("SERVING")
        b = Coordinator(tmp_path, "b", dsn)
        procs.append(b.proc)
        assert b.health() == "NOT_SERVING"
        assert b.refusal() == ("UNAVAILABLE", f"standby coordinator; the active one is {a.address}")
        addresses = f"{a.address},{b.address}"
        procs += [_worker(tmp_path, "w1", addresses), _worker(tmp_path, "w2", addresses)]
        with Client(a.address) as client:
            run = client.submit(flows.tokened_map, n=n, ledger=str(ledger), seconds=0.001)
            wait_until(lambda: len(_ledger(ledger)) >= n // 5, 120, what="the map under way")
        a.proc.kill(signal.SIGKILL)
        killed = time.monotonic()
        b.wait_health("SERVING", timeout=60)
        takeover_s = time.monotonic() - killed
        with Client(b.address) as client:
            result = client.result(run.id, timeout=300)
            completed = _completed_events(client, run.id)
        print(f"take-over: {takeover_s:.2f} s after SIGKILL (leader lease {LEASE_S} s)")
        assert takeover_s < LEASE_S + 10
        executions = _check_each_result_once(result, ledger, n)
        # No item was accepted twice: one COMPLETED event per task run, n + 1 in all.
        assert max(completed.values()) == 1 and len(completed) == n + 1
        again = [x for x, count in executions.items() if count > 1]
        assert max(executions.values()) <= 2 and len(again) <= 2000, len(again)
        for proc in procs[2:]:
            assert proc.alive(), proc.log()


def test_run_waiting_through_a_failover_returns_the_one_flow_runs_result(tmp_path, procs):
    """client.run() waits inside SubmitFlowRun; the active dies; the retry finds the same run."""
    ledger = tmp_path / "ledger"
    with pg.database("runwait") as dsn:
        a = Coordinator(tmp_path, "a", dsn)
        procs.append(a.proc)
        a.wait_health("SERVING")
        b = Coordinator(tmp_path, "b", dsn)
        procs.append(b.proc)
        addresses = f"{a.address},{b.address}"
        procs.append(_worker(tmp_path, "w1", addresses))
        box: dict = {}

        def run() -> None:
            with Client(addresses) as client:
                try:
                    box["result"] = client.run(
                        flows.tokened_map, n=2, ledger=str(ledger), seconds=1.0, timeout=120
                    )
                except BaseException as exc:  # noqa: BLE001 - checked below
                    box["error"] = exc

        caller = threading.Thread(target=run, daemon=True)
        caller.start()
        wait_until(lambda: len(_ledger(ledger)) >= 1, 60, what="the flow run under way")
        a.proc.kill(signal.SIGKILL)
        caller.join(150)
        assert not caller.is_alive() and "error" not in box, box.get("error")
        _check_each_result_once(box["result"], ledger, 2)
        with Client(b.address) as client:
            (only,) = client.list_flow_runs()  # the retried submission made no second one
            assert only.state == "COMPLETED"


def test_a_frozen_active_coordinator_is_deposed_and_its_writes_are_refused(tmp_path, procs):
    n = 600
    ledger = tmp_path / "ledger"
    with pg.database("split") as dsn:
        a = Coordinator(tmp_path, "a", dsn)
        procs.append(a.proc)
        a.wait_health("SERVING")
        b = Coordinator(tmp_path, "b", dsn)
        procs.append(b.proc)
        procs.append(_worker(tmp_path, "w1", f"{a.address},{b.address}"))
        with Client(a.address) as client:
            run = client.submit(flows.tokened_map, n=n, ledger=str(ledger), seconds=0.02)
            wait_until(lambda: len(_ledger(ledger)) >= 50, 60, what="the map under way")
        a.proc.kill(signal.SIGSTOP)
        try:
            b.wait_health("SERVING", timeout=LEASE_S + 30)  # past the frozen one's lease
            with Client(b.address) as client:
                result = client.result(run.id, timeout=120)
                final = client.get(run.id)
                completed = _completed_events(client, run.id)
        finally:
            a.proc.kill(signal.SIGCONT)
        # The resumed coordinator finds itself deposed and stands by.
        wait_until(lambda: "coordinator_deposed" in a.proc.log(), 30, what="a to step down")
        # While it swaps its active server for a standby one the port is briefly closed
        # ("connection refused" is UNAVAILABLE too), so wait for the standby's own answer.
        standby = ("UNAVAILABLE", f"standby coordinator; the active one is {b.address}")
        wait_until(lambda: a.refusal() == standby, 30, what="a to answer as a standby")
        assert a.health() in ("NOT_SERVING", "UNAVAILABLE")
        executions = _check_each_result_once(result, ledger, n)
        assert max(completed.values()) == 1 and max(executions.values()) <= 2
        # The final state is the new leader's: nothing the old one did changed it.
        with Client(b.address) as client:
            assert client.get(run.id) == final and final.state == "COMPLETED"
            assert _completed_events(client, run.id) == completed
            second = client.submit(flows.tokened_map, n=20, ledger=str(tmp_path / "second"))
            assert len(second.result(timeout=60)) == 20


def test_every_coordinator_restarted_at_once_resumes_from_postgresql(tmp_path, procs):
    n = 2000
    ledger = tmp_path / "ledger"
    with pg.database("restart") as dsn:
        a = Coordinator(tmp_path, "a", dsn)
        procs.append(a.proc)
        a.wait_health("SERVING")
        b = Coordinator(tmp_path, "b", dsn)
        procs.append(b.proc)
        ports = [a.address, b.address]
        procs.append(_worker(tmp_path, "w1", ",".join(ports)))
        with Client(a.address) as client:
            run = client.submit(flows.tokened_map, n=n, ledger=str(ledger), seconds=0.002)
            wait_until(lambda: len(_ledger(ledger)) >= 300, 60, what="the map under way")
        for c in (a, b):
            c.proc.kill(signal.SIGKILL)
            c.proc.popen.wait(10)
        # Both come back on their old ports (the worker knows those), one becomes active.
        again = []
        for name, address in zip(("a2", "b2"), ports, strict=True):
            c = Coordinator(tmp_path, name, dsn, port=int(address.rsplit(":", 1)[1]))
            procs.append(c.proc)
            again.append(c)
        wait_until(
            lambda: sorted(c.health() for c in again) == ["NOT_SERVING", "SERVING"],
            LEASE_S + 60,
            what="one active coordinator",
        )
        active = next(c for c in again if c.health() == "SERVING")
        with Client(active.address) as client:
            result = client.result(run.id, timeout=180)
            completed = _completed_events(client, run.id)
        executions = _check_each_result_once(result, ledger, n)
        assert max(completed.values()) == 1 and max(executions.values()) <= 2
