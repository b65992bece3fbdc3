"""Idle or slow peers cannot starve others: idle connections are closed, fds are raised."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import grpc
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow_coordinator.server import raise_open_file_limit

from tests.e2e.fleet import ROOT, _env

#: The coordinator's open-file limit in the test: far fewer than the idle peers.
FD_LIMIT = 96
IDLE_PEERS = 150


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_many_idle_connections_do_not_stop_a_new_worker_from_registering(tmp_path):
    port_file = tmp_path / "port"
    env = {**_env(), "FLEETFLOW_IDLE_CONNECTION_S": "1", "FLEETFLOW_HANDSHAKE_TIMEOUT_S": "1"}
    log = open(tmp_path / "coordinator.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--db", ":memory:", "--http", "off"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_fds,
    )  # fmt: skip
    idle: list[grpc.Channel] = []
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "coordinator did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        own = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
        idle.extend(grpc.insecure_channel(address, options=own) for _ in range(IDLE_PEERS))
        ready = [grpc.channel_ready_future(channel) for channel in idle]  # connect, no call
        deadline = time.monotonic() + 2
        connected = 0
        for future in ready:
            try:
                future.result(timeout=max(0.01, deadline - time.monotonic()))
                connected += 1
            except grpc.FutureTimeoutError:
                pass  # no descriptor left for it right now: one of the starving
        assert connected >= FD_LIMIT // 2, connected  # they did take the descriptors
        started = time.monotonic()
        with grpc.insecure_channel(address, options=own) as channel:
            answer = ws_grpc.WorkerServiceStub(channel).RegisterWorker(
                ws.RegisterWorkerRequest(
                    worker_id="newcomer",
                    capacity=common_pb2.Resources(amounts={"cpu": 1}),
                    task_names=["t"],
                ),
                timeout=20,
                wait_for_ready=True,
            )
        assert answer.lease_ttl_seconds > 0
        assert time.monotonic() - started < 15
    finally:
        for channel in idle:
            channel.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low // 2, hard))
        raised = raise_open_file_limit()
        assert raised > low // 2
        assert raised == (hard if hard != resource.RLIM_INFINITY else raised)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
