"""Idle or slow peers cannot starve others: idle connections are closed, fds are raised.

Health ``Check`` needs no credential, but ``Watch`` (a stream that never ends,
so its connection never goes idle) needs one when authentication is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow_coordinator import probe
from fleetflow_coordinator.server import raise_open_file_limit
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.fleet import ROOT, _env

from .secure import make_pki, secure_coordinator

#: The coordinator's open-file limit in the test: far fewer than the idle peers.
FD_LIMIT = 96
IDLE_PEERS = 150


#: Sets the open-file limit (soft = hard = argv[1]), then execs argv[2:]. The
#: limit is set in the new process rather than by a ``preexec_fn``: that makes
#: subprocess fork() this test process (instead of vfork), whose gRPC threads
#: (earlier tests' channels) may be busy then, and gRPC's fork handlers
#: sometimes SIGABRT the child before its exec ("epoll_wait error: Bad file
#: descriptor"), so the coordinator never started.
_LIMIT_THEN_EXEC = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


@contextlib.contextmanager
def _coordinator_with_few_fds(tmp_path: Path, *args: str) -> Iterator[str]:
    """Run a coordinator whose open-file limit is :data:`FD_LIMIT` (it cannot raise it).

    Yields its address once it serves; stops it on exit. Its log is printed
    when the block fails, and is in the message when it does not start.
    """
    port_file = tmp_path / "port"
    log_path = tmp_path / "coordinator.log"
    env = {**_env(), "FLEETFLOW_IDLE_CONNECTION_S": "1", "FLEETFLOW_HANDSHAKE_TIMEOUT_S": "1"}
    command = [
        *(sys.executable, "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0"),
        *("--port-file", str(port_file), "--db", ":memory:", "--http", "off", *args),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LIMIT_THEN_EXEC, str(FD_LIMIT), *command],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"coordinator did not start (exit status {proc.poll()}); its log:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.05)
        # In force in the coordinator itself (it raises a soft limit to the hard one).
        assert psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (FD_LIMIT, FD_LIMIT)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    except BaseException:
        print(f"==== coordinator log\n{log_path.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_many_idle_connections_do_not_stop_a_new_worker_from_registering(tmp_path):
    idle: list[grpc.Channel] = []
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(_coordinator_with_few_fds(tmp_path))
        stack.callback(lambda: [channel.close() for channel in idle])
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


def _register(channel: grpc.Channel, metadata=()) -> ws.RegisterWorkerResponse:
    return ws_grpc.WorkerServiceStub(channel).RegisterWorker(
        ws.RegisterWorkerRequest(
            worker_id="newcomer",
            capacity=common_pb2.Resources(amounts={"cpu": 1}),
            task_names=["t"],
        ),
        metadata=metadata,
        timeout=20,
        wait_for_ready=True,
    )


def test_health_watches_without_a_credential_do_not_pin_connections(tmp_path):
    """Strangers each opening a health Watch over TLS are refused, go idle, and are closed.

    Were Watch open to them, each stream would keep its connection from ever
    going idle: with more of them than the coordinator has descriptors, no
    worker could connect.
    """
    pki = make_pki(tmp_path)
    tls = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    own = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels: list[grpc.Channel] = []
    silent: list[socket.socket] = []
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(
            _coordinator_with_few_fds(
                tmp_path,
                *("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
                *("--auth-file", str(pki.auth_file)),
            )
        )
        stack.callback(lambda: [channel.close() for channel in channels])
        stack.callback(lambda: [sock.close() for sock in silent])
        # The probes use Check, with no credential: it answers.
        assert probe.main([address, "--tls-ca", str(pki.ca), "--timeout", "10"]) == 0
        # Peers that connect and never start TLS are closed after handshake_timeout_s.
        host, _, port = address.rpartition(":")
        silent.extend(socket.create_connection((host, int(port)), timeout=10) for _ in range(5))
        channels.extend(grpc.secure_channel(address, tls, options=own) for _ in range(IDLE_PEERS))
        request = health_pb2.HealthCheckRequest(service="")
        watches = [health_pb2_grpc.HealthStub(c).Watch(request, timeout=30) for c in channels]
        time.sleep(2)  # the watches connect and are answered, or starve for descriptors
        started = time.monotonic()
        with grpc.secure_channel(address, tls, options=own) as channel:
            worker = [("authorization", f"Bearer {pki.tokens['worker']}")]
            assert _register(channel, worker).lease_ttl_seconds > 0
        assert time.monotonic() - started < 15
        # Those that starved for a descriptor get theirs as refused ones are closed.
        deadline = time.monotonic() + 20
        while not all(w.done() for w in watches) and time.monotonic() < deadline:
            time.sleep(0.1)
        for watch in watches:
            watch.cancel()  # no-op for those already ended
        codes = [watch.code() for watch in watches]
        refused = codes.count(grpc.StatusCode.UNAUTHENTICATED)
        assert refused >= FD_LIMIT // 2, codes  # they did connect and take descriptors
        assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE}, codes
        assert probe.main([address, "--tls-ca", str(pki.ca), "--timeout", "10"]) == 0
        for sock in silent:  # long closed by now (1 s), while the Watches were refused
            sock.settimeout(10)
            assert sock.recv(1) == b"", "a peer that never spoke TLS was not closed"


async def test_health_check_needs_no_credential_but_watch_needs_one(tmp_path):
    pki = make_pki(tmp_path)
    tls = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    request = health_pb2.HealthCheckRequest(service="")
    async with secure_coordinator(pki) as (_, address):
        async with grpc.aio.secure_channel(address, tls) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(request, timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            for token in (None, pki.tokens["stranger"]):
                metadata = [("authorization", f"Bearer {token}")] if token else None
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in stub.Watch(request, metadata=metadata, timeout=5):
                        pass
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Check needs none" in refused.value.details()
            # Any known credential may watch (a viewer's dashboard, a load balancer's).
            watch = stub.Watch(
                request, metadata=[("authorization", f"Bearer {pki.tokens['viewer']}")]
            )
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()


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


async def test_a_standbys_health_watch_needs_a_credential_too(tmp_path):
    from fleetflow_coordinator.auth import AuthFile
    from fleetflow_coordinator.security import Security
    from fleetflow_coordinator.settings import Settings
    from fleetflow_coordinator.standby import _standby_server

    pki = make_pki(tmp_path)
    security = Security(auth=AuthFile(str(pki.auth_file)))
    server, port, _ = await _standby_server(Settings(), "127.0.0.1:0", security)
    request = health_pb2.HealthCheckRequest(service="")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(request, timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Watch(request, timeout=5):
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            token = [("authorization", f"Bearer {pki.tokens['worker']}")]
            watch = stub.Watch(request, metadata=token)
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        await server.stop(0)
