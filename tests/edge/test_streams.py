"""Connection bounds as configured: the server options, the stream cap per connection, --insecure.

The stream cap is HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS: a peer's calls past
it wait in the peer until one ends; other connections are not affected.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow_coordinator.security import Security, check_exposure
from fleetflow_coordinator.server import MIN_PEER_PING_INTERVAL_S, server_options
from fleetflow_coordinator.settings import Settings
from structlog.testing import capture_logs

from tests.e2e.fleet import ROOT, _env
from tests.review.helpers import plain, spec_of

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def test_server_options_carry_the_connection_settings():
    settings = Settings(
        idle_connection_s=7.5,
        handshake_timeout_s=3,
        keepalive_s=11,
        keepalive_timeout_s=4,
        max_streams_per_connection=9,
    )
    options = dict(server_options(settings))
    assert options["grpc.max_connection_idle_ms"] == 7500
    assert options["grpc.server_handshake_timeout_ms"] == 3000
    assert options["grpc.keepalive_time_ms"] == 11_000
    assert options["grpc.keepalive_timeout_ms"] == 4000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 5000
    assert MIN_PEER_PING_INTERVAL_S == 5.0
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.max_concurrent_streams"] == 9
    assert options["grpc.so_reuseport"] == 0
    defaults = dict(server_options(Settings()))
    assert defaults["grpc.max_connection_idle_ms"] == 120_000
    assert defaults["grpc.max_concurrent_streams"] == 100


def test_an_exposed_listen_with_insecure_starts_and_warns_without_root():
    exposed = Settings(listen="0.0.0.0:50051", http="0.0.0.0:8265", insecure=True)
    with capture_logs() as logs:
        problems = check_exposure(exposed, Security())
    assert len(problems) == 2
    assert "--listen 0.0.0.0:50051 is beyond loopback without TLS and authentication" in problems[0]
    assert "--http 0.0.0.0:8265 is beyond loopback without TLS and tokens" in problems[1]
    (warning,) = [e for e in logs if e["event"] == "insecure"]
    assert warning["log_level"] == "warning" and warning["exposed"] == problems
    # Without --insecure the same settings refuse to start.
    with pytest.raises(ValueError, match="refusing to start: --listen 0.0.0.0:50051"):
        check_exposure(Settings(listen="0.0.0.0:50051", http="off"), Security())
    # --insecure on loopback still warns at every start, naming nothing exposed.
    with capture_logs() as logs:
        assert check_exposure(Settings(insecure=True, http="off"), Security()) == []
    assert [e["exposed"] for e in logs if e["event"] == "insecure"] == [["nothing beyond loopback"]]


@pytest.fixture
def capped(tmp_path):
    """A coordinator process whose connections carry at most 2 calls at once."""
    port_file = tmp_path / "port"
    env = {**_env(), "FLEETFLOW_MAX_STREAMS_PER_CONNECTION": "2"}
    log = open(tmp_path / "coordinator.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--db", ":memory:", "--http", "off"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "coordinator did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def test_a_connection_holds_at_most_max_streams_per_connection_calls(capped):
    async with grpc.aio.insecure_channel(capped, options=OWN_CONNECTION) as channel:
        stub = cs_grpc.CoordinatorServiceStub(channel)
        submitted = await stub.SubmitFlowRun(
            cs.SubmitFlowRunRequest(spec=spec_of(plain("t", x=1))), timeout=10
        )
        request = cs.WatchFlowRunRequest(flow_run_id=submitted.flow_run_id)
        # No worker offers "t": the flow run never ends, and each watch stays open.
        watches = [stub.WatchFlowRun(request, timeout=60) for _ in range(3)]
        for watch in watches[:2]:
            assert (await asyncio.wait_for(watch.read(), 10)).events
        third = asyncio.ensure_future(watches[2].read())
        done, _ = await asyncio.wait({third}, timeout=1.5)
        assert not done, "a third call went through on a connection capped at 2"
        # Another connection is not affected.
        async with grpc.aio.insecure_channel(capped, options=OWN_CONNECTION) as other:
            answer = await ws_grpc.WorkerServiceStub(other).RegisterWorker(
                ws.RegisterWorkerRequest(
                    worker_id="w1",
                    capacity=common_pb2.Resources(amounts={"cpu": 1}),
                    task_names=["other"],
                ),
                timeout=10,
            )
            assert answer.lease_ttl_seconds > 0
        # One call ends: the waiting one goes through.
        watches[0].cancel()
        assert (await asyncio.wait_for(third, 10)).events
        for watch in watches[1:]:
            watch.cancel()
