"""A client given several coordinator addresses moves to another one on UNAVAILABLE.

Real coordinator processes; one is stopped or killed. The standby's answer
("standby coordinator; the active one is HOST:PORT") comes from a small gRPC
server in the test, since the hot standby itself is the process helper's work.
"""

from __future__ import annotations

import signal
import socket
from concurrent import futures

import grpc
import pytest
import structlog
from fleetflow import Client, CoordinatorUnreachable
from fleetflow.loader import load_module

from .fleet import FLOWS, fleetflow

# Loaded as workers load it (by path, under its stem), so task names agree.
flows = load_module(str(FLOWS))

STANDBY = "standby coordinator; the active one is {active}"


@pytest.fixture
def standby():
    """A gRPC server that answers every CoordinatorService call like a standby."""

    class Standby(grpc.GenericRpcHandler):
        active = ""
        calls = 0

        def service(self, handler_call_details):
            if not handler_call_details.method.startswith("/fleetflow.api.v1.CoordinatorService/"):
                return None

            def refuse(request, context):
                Standby.calls += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY.format(active=Standby.active))

            if handler_call_details.method.endswith("/WatchFlowRun"):
                return grpc.unary_stream_rpc_method_handler(refuse)
            return grpc.unary_unary_rpc_method_handler(refuse)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Standby(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Standby.address = f"127.0.0.1:{port}"
    yield Standby
    server.stop(None)


def test_a_stopped_coordinator_is_left_for_the_next_one(fleet, tmp_path):
    first = fleet.start_coordinator(db=str(tmp_path / "first.db"))
    first_proc = fleet.coordinator
    second = fleet.start_coordinator(db=str(tmp_path / "second.db"))
    fleet.start_worker()  # of the second
    with structlog.testing.capture_logs() as logs, Client(f"{first},{second}") as client:
        assert client.list_flow_runs() == []  # the first one answers
        first_proc.kill(signal.SIGKILL)
        first_proc.popen.wait(10)
        assert client.submit(flows.map_inc, n=2).result(timeout=60) == [1, 2]
    switched = [e for e in logs if e["event"] == "coordinator_switched"]
    assert [(e["previous"], e["address"]) for e in switched] == [(first, second)]
    # a new client (and the CLI) given the same list skips the stopped one
    with Client(f"{first},{second}", connect_timeout_s=5) as client:
        assert client.submit(flows.map_inc, n=3).result(timeout=60) == [1, 2, 3]
        assert len(client.list_flow_runs()) == 2
    done = fleetflow("flow-runs", "--json", "--coordinator", f"{first},{second}")
    assert done.stdout.count("map_inc") == 2


def test_none_reachable_names_each_address():
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    first, second = (f"127.0.0.1:{port}" for port in ports)
    with Client(f"{first},{second}", connect_timeout_s=1) as client:
        with pytest.raises(CoordinatorUnreachable) as info:
            client.list_workers()
    assert [(f.address, f.kind) for f in info.value.failures] == [
        (first, "refused"),
        (second, "refused"),
    ]
    assert "2 coordinator addresses" in str(info.value)


def test_a_standby_sends_the_client_to_the_active_one(fleet, standby):
    active = fleet.start_coordinator()
    standby.active = active
    with Client(f"{standby.address},{active}") as client:
        for _ in range(5):
            assert client.list_flow_runs() == []
        run = client.submit(flows.map_inc, n=2)
        events = client.watch(run.id)
        assert next(events).kind == "FLOW_RUN_SUBMITTED"
        events.close()
        assert client.cancel(run.id) > 0
        assert run.wait(timeout=30) == "CANCELLED"
    assert standby.calls == 1  # asked first (listed first), then never again


def test_a_name_with_several_addresses_counts_as_all(fleet, tmp_path, monkeypatch):
    """coordinators.test resolves to 127.0.0.2 and 127.0.0.1, one coordinator on each."""
    second = fleet.start_coordinator(db=str(tmp_path / "second.db"))
    port = int(second.rsplit(":", 1)[1])
    first_proc = None
    try:
        fleet.start_coordinator("--listen", f"127.0.0.2:{port}", db=str(tmp_path / "first.db"))
        first_proc = fleet.coordinator
    except RuntimeError:
        pytest.skip("cannot listen on 127.0.0.2 here")
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "coordinators.test":
            return real("127.0.0.2", *args, **kwargs) + real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with structlog.testing.capture_logs() as logs, Client(f"coordinators.test:{port}") as client:
        client.submit(flows.map_inc, n=1)
        assert len(client.list_flow_runs()) == 1  # on 127.0.0.2, listed first
        first_proc.kill(signal.SIGKILL)
        first_proc.popen.wait(10)
        assert client.list_flow_runs() == []  # on 127.0.0.1
    switched = [(e["previous"], e["address"]) for e in logs if e["event"] == "coordinator_switched"]
    assert switched == [
        (
            f"coordinators.test:{port} (127.0.0.2:{port})",
            f"coordinators.test:{port} (127.0.0.1:{port})",
        )
    ]
