"""The grpc.aio server's lifecycle: create, serve until SIGTERM, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from fleetflow.api.v1 import (
    coordinator_service_pb2_grpc,
    transfer_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleetflow_coordinator.dashboard import start_dashboard
from fleetflow_coordinator.interceptors import EdgeInterceptor
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.security import Security, check_exposure, load_security
from fleetflow_coordinator.servicers import CoordinatorServicer, WorkerServicer
from fleetflow_coordinator.settings import Settings
from fleetflow_coordinator.store import open_store
from fleetflow_coordinator.transfer import TransferServicer

__all__ = [
    "create_server",
    "run_active",
    "serve",
    "server_options",
    "set_health",
    "CHANNEL_OPTIONS",
]

log = structlog.get_logger(__name__)

#: Large fan-in results travel in one message: allow up to 256 MiB.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    # gRPC sets SO_REUSEPORT on Linux by default, which lets a second coordinator
    # bind the same port and split the clients between two states: refuse that.
    ("grpc.so_reuseport", 0),
]

#: The most often a peer may ping a connection with no call in flight, seconds
#: (more often is answered with GOAWAY "too_many_pings" after two strikes).
MIN_PEER_PING_INTERVAL_S = 5.0


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Server options: message sizes, then the connection bounds of ``settings``.

    Idle or slow peers cannot starve others: a connection with no call in
    flight is closed after ``idle_connection_s``, one stuck in its handshake
    after ``handshake_timeout_s``, a silent one after a keepalive ping goes
    unanswered, and one connection holds at most ``max_streams_per_connection``
    calls at once (gRPC's core arguments of the same names, in milliseconds).
    """
    return [
        *CHANNEL_OPTIONS,
        ("grpc.max_connection_idle_ms", int(settings.idle_connection_s * 1000)),
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_PEER_PING_INTERVAL_S * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
    ]


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit.

    Each connection is a file descriptor; the common soft limit of 1,024 let
    1,100 idle sockets block every client and worker. Go's runtime does the
    same at start.

    Returns:
        The soft limit now in force (-1 where the platform has none).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def protect_new_files(db: str) -> None:
    """Create every file of this process readable by its owner only (umask 077).

    The database holds every pickled argument and result. An existing
    database file readable by others is made 0600 first (SQLite gives its
    journal files the database file's mode), and that is logged.
    """
    os.umask(0o077)
    if db and db != ":memory:":
        path = Path(db)
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, 0o600)
                log.warning("db_file_mode_tightened", db=db, was=oct(mode), now="0o600")


_SERVICES = (
    "fleetflow.api.v1.CoordinatorService",
    "fleetflow.api.v1.WorkerService",
    "fleetflow.api.v1.TransferService",
)


async def create_server(
    address: str,
    runtime: Runtime,
    security: Security | None = None,
    *,
    health_servicer: health.aio.HealthServicer | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    """Create and start a server bound to ``address`` (``"127.0.0.1:0"`` in tests).

    Args:
        address: ``HOST:PORT`` to bind; port 0 picks a free one.
        runtime: The runtime the servicers serve.
        security: TLS credentials and accepted credentials; loaded from
            ``runtime.settings`` when omitted (:func:`load_security`).
        health_servicer: The standard health service to serve (set to
            SERVING here); a new one when omitted.
        interceptors: Interceptors that run before the edge interceptor
            (the hot standby's leadership gate).

    Returns:
        ``(server, port)`` with the port actually bound.

    Raises:
        RuntimeError: the address could not be bound.
        ValueError: a TLS or auth file named in the settings is unusable.
    """
    if security is None:
        security = load_security(runtime.settings)
    refused = runtime.metrics.credential_refused
    interceptor = EdgeInterceptor(security.auth, lambda code, _: refused.labels(code).inc())
    limit = runtime.settings.max_message_bytes
    options = [
        *(o for o in server_options(runtime.settings) if not o[0].endswith("_message_length")),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
    server = grpc.aio.server(options=options, interceptors=[*interceptors, interceptor])
    coordinator_service_pb2_grpc.add_CoordinatorServiceServicer_to_server(
        CoordinatorServicer(runtime), server
    )
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(runtime), server)
    transfer_service_pb2_grpc.add_TransferServiceServicer_to_server(
        TransferServicer(runtime, runtime.results), server
    )
    if health_servicer is None:
        health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = bind(server, address, security)
    await server.start()
    await set_health(health_servicer, True)
    return server, port


def bind(server: grpc.aio.Server, address: str, security: Security) -> int:
    """Add the listening port (TLS when ``security`` has credentials); return it.

    Raises:
        RuntimeError: the address could not be bound.
    """
    try:
        if security.server_credentials is not None:
            port = server.add_secure_port(address, security.server_credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}: address in use or invalid")
    return port


async def set_health(servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Set the overall status and every service's to SERVING or NOT_SERVING."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *_SERVICES):
        await servicer.set(name, status)


def _write_port_file(path: str, port: int) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, target)


def graceful_signals() -> asyncio.Event:
    """Replace the start-up signal handlers by the loop's: SIGTERM/SIGINT set the event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(settings: Settings) -> None:
    """Run a coordinator until SIGTERM or SIGINT, then stop gracefully.

    Until it serves, the process-wide start-up handlers (installed by the
    entry point before anything else, see ``fleetflow.startup``) end the
    process at once on SIGTERM/SIGINT; from then on a signal stops it
    gracefully: health NOT_SERVING, in-flight RPCs finish, the commit in
    flight and then the pending changes are stored, exit 0. With a
    PostgreSQL database the process may stand by first (see ``standby.py``).

    Raises:
        ValueError: TLS or auth options are unusable, or the coordinator would
            serve beyond loopback without them (and without ``insecure``).
        StoreError: the database cannot be opened or read.
        RuntimeError: the address cannot be bound.
        fleetflow_coordinator.supervisor.LoopCrashed: a background loop
            crashed (logged with its traceback); the process must exit non-zero.
    """
    security = load_security(settings)
    check_exposure(settings, security)
    raise_open_file_limit()
    protect_new_files(settings.db)
    store = await asyncio.to_thread(
        open_store,
        settings.db,
        synchronous=settings.synchronous,
        leader_lease_s=settings.leader_lease_s,
    )
    if getattr(store, "shared", False):
        from fleetflow_coordinator.standby import serve_shared

        await serve_shared(settings, store, security)  # type: ignore[arg-type]
        return
    runtime = Runtime(settings, store)
    restored = await runtime.open()

    def started(port: int) -> None:
        host = settings.listen.rpartition(":")[0]
        log.info(
            "coordinator_started",
            address=f"{host}:{port}",
            lease_ttl_s=settings.lease_ttl_s,
            db=settings.db,
            restored_flow_runs=restored,
            tls=security.tls,
            mutual_tls=security.mutual,
            authentication=security.auth is not None,
        )
        if settings.port_file:
            _write_port_file(settings.port_file, port)

    stop = asyncio.Event()
    await run_active(
        settings, runtime, settings.listen, stop, started, security, install_signals=True
    )
    if runtime.fatal_error is not None:
        raise runtime.fatal_error


async def run_active(
    settings: Settings,
    runtime: Runtime,
    listen: str,
    stop: asyncio.Event,
    started: Callable[[int], None],
    security: Security,
    *,
    install_signals: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> str:
    """Serve one restored runtime until a stop, a crashed loop or a deposition.

    Args:
        settings: The coordinator's settings.
        runtime: A runtime whose state is restored (``open()`` done).
        listen: ``HOST:PORT`` to bind.
        stop: Set to stop gracefully (with ``install_signals``, by SIGTERM/SIGINT).
        started: Called with the bound port once serving.
        security: TLS credentials and accepted credentials.
        install_signals: Wire SIGTERM/SIGINT to ``stop`` once serving.
        interceptors: Extra server interceptors, before the edge's.

    Returns:
        ``"stopped"``, ``"crashed"`` or ``"deposed"``.
    """
    dashboard = await start_dashboard(settings, runtime)  # None with --http off
    health_servicer = health.aio.HealthServicer()
    try:
        server, port = await create_server(
            listen,
            runtime,
            security,
            health_servicer=health_servicer,
            interceptors=interceptors,
        )
    except BaseException:
        if dashboard is not None:
            await dashboard.stop()
        await runtime.stop()
        raise
    runtime.start()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # replaces the start-up handlers
    started(port)
    waits = [loop.create_task(e.wait()) for e in (stop, runtime.fatal, runtime.deposed)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if runtime.fatal.is_set():
        reason = "crashed"
    elif runtime.deposed.is_set():
        reason = "deposed"
    else:
        reason = "stopped"
    # Not serving from here on, whatever the reason: probes and load balancers
    # see it before the port closes.
    await set_health(health_servicer, False)
    runtime.serving_over.set()  # worker sessions end now, not at the end of the grace period
    log.info("coordinator_stopping", reason=reason)
    if dashboard is not None:
        await dashboard.stop()
    await server.stop(grace=2.0 if reason == "stopped" else 0.5)
    await runtime.stop()
    return reason
