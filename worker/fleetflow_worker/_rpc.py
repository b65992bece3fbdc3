"""The worker's RPC layer: channels to the active coordinator, supervision, recovery logs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from fleetflow.addresses import expand_dns, parse_addresses, standby_hint
from fleetflow.api.v1 import worker_service_pb2_grpc

from fleetflow_worker.backoff import Backoff

__all__ = ["CoordinatorConnection", "channel_options", "recovered", "supervised"]

log = structlog.get_logger()


def recovered(rpc: str, backoff: Backoff) -> None:
    """Record a successful call of ``rpc``; log once when it ends a streak of failures."""
    failures = backoff.succeeded()
    if failures:
        log.info("coordinator_rpc_recovered", rpc=rpc, failed_calls=failures)


async def supervised(name: str, loop: Callable[[], Awaitable[Any]]) -> None:
    """Run a loop forever: a bug that raises is logged and the loop restarts."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker_loop_crashed", loop=name)
            await asyncio.sleep(1.0)


def channel_options(backoff_cap_s: float) -> list[tuple[str, Any]]:
    """Channel options: no receive limit for big leases, and fast reconnects.

    gRPC's own reconnect backoff grows to 120 s by default; capping it keeps
    a restarted coordinator from waiting that long for its workers.
    """
    cap_ms = max(100, int(backoff_cap_s * 1000))
    return [
        ("grpc.max_receive_message_length", -1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
    ]


class CoordinatorConnection:
    """The worker's channels to its coordinators; calls go to the one believed active.

    Args:
        addresses: ``HOST:PORT`` or a comma list (several coordinators on one
            PostgreSQL database: one active, the others standing by); a DNS
            name with several addresses counts as several.
        options: gRPC channel options.
        channel: Opens a channel to one address with the options (the worker's
            credentials: TLS and token); an insecure channel by default.

    With several addresses, a call that fails with UNAVAILABLE (a standby's
    answer, a refused or lost connection) or DEADLINE_EXCEEDED (a frozen
    coordinator) moves the worker on: to the address a standby named as the
    active one when it is in the list, else to the next one. Only the first
    failure on the current address moves it, so loops failing together do
    not skip the new one. The caller retries as it does today, and a
    coordinator that does not know the worker makes it register again and
    re-attach its running attempts.

    Raises:
        ValueError: an address is malformed (the message names it).
    """

    def __init__(
        self,
        addresses: str,
        options: list[tuple[str, Any]],
        *,
        channel: Callable[[str, list[tuple[str, Any]]], grpc.aio.Channel] | None = None,
    ) -> None:
        self.addresses = [str(a) for a in expand_dns(parse_addresses(addresses))]
        self.options = options
        self._open = channel or (lambda address, opts: grpc.aio.insecure_channel(address, opts))
        self._index = 0
        #: Bumped on every move, so a failure seen on an older address moves nothing.
        self.generation = 0
        self._stubs: dict[str, tuple[grpc.aio.Channel, Any]] = {}
        self.stub = _FollowingStub(self)

    @property
    def address(self) -> str:
        """The address calls go to now."""
        return self.addresses[self._index]

    def current(self) -> Any:
        """The WorkerService stub of the current address (its channel opened on first use)."""
        address = self.address
        entry = self._stubs.get(address)
        if entry is None:
            channel = self._open(address, self.options)
            entry = self._stubs[address] = (
                channel,
                worker_service_pb2_grpc.WorkerServiceStub(channel),
            )
        return entry[1]

    def current_channel(self) -> grpc.aio.Channel:
        """The channel to the current address (for the result store's TransferService)."""
        self.current()
        return self._stubs[self.address][0]

    def failed(self, generation: int, exc: grpc.aio.AioRpcError) -> None:
        """A call sent at ``generation`` failed with ``exc``: move on if it says to."""
        if len(self.addresses) < 2 or generation != self.generation:
            return
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return
        named = standby_hint(exc.details())
        hint = None if named is None else str(named)
        before = self.address
        if hint in self.addresses and hint != before:
            self._index = self.addresses.index(hint)
        else:
            self._index = (self._index + 1) % len(self.addresses)
        self.generation += 1
        log.info(
            "coordinator_switched",
            previous=before,
            address=self.address,
            code=exc.code().name,
            details=exc.details(),
        )

    async def close(self) -> None:
        """Close every channel opened."""
        channels = [channel for channel, _ in self._stubs.values()]
        self._stubs.clear()
        for channel in channels:
            await channel.close()


class _FollowingStub:
    """Looks like a WorkerServiceStub; each call goes to the connection's current address."""

    def __init__(self, connection: CoordinatorConnection) -> None:
        self._connection = connection

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        connection = self._connection

        async def call(request: Any, **kwargs: Any) -> Any:
            generation = connection.generation
            try:
                return await getattr(connection.current(), method)(request, **kwargs)
            except grpc.aio.AioRpcError as exc:
                connection.failed(generation, exc)
                raise

        return call
