"""Hot standby on a shared PostgreSQL database: one active coordinator, the others wait.

A coordinator on a shared store (``PostgresStore``) binds its port first and
campaigns for the leadership (a lease row in the database, see
``store/postgres.py``):

* **standby**: it serves only the standard health service, NOT_SERVING, and
  answers every ``CoordinatorService`` and ``WorkerService`` RPC with
  UNAVAILABLE, "standby coordinator; the active one is HOST:PORT" (the address
  the active one advertised; "unknown" before any). It checks the leadership
  every ``leader_poll_s``.
* **active**: once the lease has run out (the active one died, was cut off or
  froze) or was released (a graceful stop), a standby bumps the epoch,
  restores the whole state from the database (the core's restore path, as
  after a restart), and serves on the same port. Its workers re-register and
  re-attach their running attempts exactly as after a restart.
* **deposed**: every commit is fenced by the epoch, so once another
  coordinator took over, the database refuses the old one's writes; it also
  steps down by itself when it could not renew the lease in time (it never
  serves past ``leader_lease_s`` minus a margin without a successful
  renewal, by its own monotonic clock). Its in-memory state is dropped and it
  stands by again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc

from fleetflow_coordinator.interceptors import HealthGate
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.security import Security
from fleetflow_coordinator.server import (
    _write_port_file,
    bind,
    graceful_signals,
    run_active,
    server_options,
    set_health,
)
from fleetflow_coordinator.settings import Settings
from fleetflow_coordinator.store.base import NotLeader, StoreError
from fleetflow_coordinator.store.postgres import LeaderState, PostgresStore
from fleetflow_coordinator.supervisor import StoreWriter

__all__ = ["LeaderGate", "serve_shared", "standby_message"]

log = structlog.get_logger(__name__)

_GATED = ("/fleetflow.api.v1.CoordinatorService/", "/fleetflow.api.v1.WorkerService/")
_SESSION = "/fleetflow.api.v1.WorkerService/WorkerSession"


def standby_message(active: str) -> str:
    """The fixed UNAVAILABLE message of a standby (clients and workers parse it)."""
    return f"standby coordinator; the active one is {active or 'unknown'}"


def lease_margin_s(lease_s: float) -> float:
    """How long before its lease runs out an active coordinator steps down, seconds."""
    return min(1.0, 0.2 * lease_s)


class _Refuse(grpc.GenericRpcHandler):
    """Answers every fleetflow RPC with the standby message (health is served apart)."""

    def __init__(self) -> None:
        self.active = ""
        self._handler = grpc.unary_unary_rpc_method_handler(self._refuse)
        # a stream is refused at its start, before any message is read
        self._stream_handler = grpc.stream_stream_rpc_method_handler(self._refuse)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The refusing handler for fleetflow's services; ``None`` (UNIMPLEMENTED) otherwise."""
        return self.handler(details.method) if details.method.startswith(_GATED) else None

    def handler(self, method: str) -> grpc.RpcMethodHandler:
        """The refusing handler of the fleetflow ``method`` (a stream's for WorkerSession)."""
        return self._stream_handler if method == _SESSION else self._handler

    async def _refuse(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, standby_message(self.active))
        return b""  # pragma: no cover - abort raises


class LeaderGate(grpc.aio.ServerInterceptor):
    """On the active server: refuse every fleetflow RPC once the lease may have run out.

    After a freeze (SIGSTOP, a long pause) the process must not answer from
    state that another coordinator may have changed since; the check is one
    monotonic clock read per call.
    """

    def __init__(self, store: PostgresStore, lease_s: float) -> None:
        self.store = store
        self.valid_s = lease_s - lease_margin_s(lease_s)
        self._refuse = _Refuse()

    def valid(self) -> bool:
        """Whether this coordinator surely still holds the leadership."""
        return bool(self.store.epoch) and time.monotonic() - self.store.fenced_at < self.valid_s

    async def intercept_service(self, continuation, handler_call_details):  # noqa: D102
        if not handler_call_details.method.startswith(_GATED):
            return await continuation(handler_call_details)
        if not self.valid():
            return self._refuse.handler(handler_call_details.method)
        # A call that waits for a commit when this coordinator steps down gets
        # NotLeader, which the edge's error table answers like a standby; an
        # open WorkerSession checks valid() for every message (runtime.leads)
        # and ends when the runtime stops serving.
        return await continuation(handler_call_details)


async def _standby_server(
    settings: Settings, address: str, security: Security
) -> tuple[grpc.aio.Server, int, _Refuse]:
    """The standby's server: health NOT_SERVING, every fleetflow RPC refused.

    It speaks TLS like the active server (so peers can connect and learn who is
    active) but asks no token: the answer names the active coordinator only.
    Health Watch still needs one, as on the active server (:class:`HealthGate`).
    """
    # Health Watch needs a credential here too: its stream would pin the connection.
    server = grpc.aio.server(
        options=server_options(settings), interceptors=[HealthGate(security.auth)]
    )
    refuse = _Refuse()
    server.add_generic_rpc_handlers((refuse,))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = bind(server, address, security)
    await server.start()
    await set_health(health_servicer, False)
    return server, port, refuse


def advertised(settings: Settings, port: int) -> str:
    """The ``HOST:PORT`` recorded as the active coordinator's address."""
    if settings.advertise:
        return settings.advertise
    host = settings.listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}"


async def _hold_leadership(runtime: Runtime, store: PostgresStore, lease_s: float) -> None:
    """Renew the lease while active; step down when it cannot be renewed in time."""
    renew_every = lease_s / 3
    valid_s = lease_s - lease_margin_s(lease_s)
    while True:
        await asyncio.sleep(min(0.1, renew_every / 2))
        age = time.monotonic() - store.fenced_at
        if age >= valid_s:
            runtime.depose(
                NotLeader(
                    f"the leadership lease was not renewed for {age:.1f} s (database "
                    "unreachable, or this process was frozen); stepping down"
                )
            )
            return
        if age >= renew_every:
            try:
                await runtime.writer.call(store.renew)
            except NotLeader as exc:
                runtime.depose(exc)
                return


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


async def serve_shared(settings: Settings, store: PostgresStore, security: Security) -> None:
    """Stand by, take over, serve, step down, until SIGTERM/SIGINT (see the module).

    Raises:
        RuntimeError: the address cannot be bound.
        StoreError: the stored state cannot be read when taking over.
        fleetflow_coordinator.supervisor.LoopCrashed: a loop crashed while active.
    """
    writer = StoreWriter(store, inline_rows=settings.inline_commit_rows)
    host = settings.listen.rpartition(":")[0]
    listen = settings.listen
    standby: tuple[grpc.aio.Server, int, _Refuse] | None = None
    stop: asyncio.Event | None = None
    port_written = False
    last: tuple[str, bool] | None = None
    try:
        while stop is None or not stop.is_set():
            if standby is None:
                standby = await _standby_server(settings, listen, security)
                listen = f"{host}:{standby[1]}"  # keep the port across roles
                if stop is None:
                    stop = graceful_signals()
            port = standby[1]
            address = advertised(settings, port)
            try:
                state: LeaderState = await writer.call(store.campaign, address)
            except StoreError as exc:
                log.warning("leadership_check_failed", error=str(exc))
                await _wait(stop, settings.leader_poll_s)
                continue
            if not state.acquired:
                standby[2].active = state.address if state.live else ""
                if last != (state.address, state.live):
                    last = (state.address, state.live)
                    log.info(
                        "coordinator_standby",
                        address=address,
                        active=state.address if state.live else None,
                        epoch=state.epoch,
                    )
                if not port_written and settings.port_file:
                    _write_port_file(settings.port_file, port)
                    port_written = True
                await _wait(stop, settings.leader_poll_s)
                continue
            last = None
            await standby[0].stop(0)
            standby = None
            reason = await _serve_term(settings, store, writer, listen, stop, port, state, security)
            if reason == "stopped":
                await writer.call(store.release)
                log.info("leadership_released", epoch=state.epoch)
                break
    finally:
        if standby is not None:
            await standby[0].stop(0)
        await writer.close()


async def _serve_term(
    settings: Settings,
    store: PostgresStore,
    writer: StoreWriter,
    listen: str,
    stop: asyncio.Event,
    port: int,
    state: LeaderState,
    security: Security,
) -> str:
    """One term as the active coordinator: restore, serve, and end by stop or deposition."""
    started_at = time.monotonic()
    runtime = Runtime(settings, store, writer=writer)
    try:
        restored = await runtime.open()
    except BaseException:
        await runtime.stop()
        raise

    def started(bound: int) -> None:
        log.info(
            "coordinator_active",
            address=advertised(settings, bound),
            epoch=state.epoch,
            restored_flow_runs=restored,
            takeover_s=round(time.monotonic() - started_at, 3),
            db=store.name,
        )
        if settings.port_file:
            _write_port_file(settings.port_file, bound)

    runtime.spawn("leadership", _hold_leadership(runtime, store, settings.leader_lease_s))
    gate = LeaderGate(store, settings.leader_lease_s)
    runtime.leads = gate.valid
    reason = await run_active(
        settings, runtime, listen, stop, started, security, interceptors=[gate]
    )
    if reason == "crashed":
        raise runtime.fatal_error  # type: ignore[misc]
    return reason
