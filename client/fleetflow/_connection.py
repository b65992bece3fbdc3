"""The client's connection to the coordinator: channels, failover and the retry loop of every call.

Channel options, keepalive, credentials and failover have one home here, and
serve both clients (through a transport, see ``_transport.py``):

- **Connecting is bounded.** Before a call on a channel that is not ready, the
  client waits for one of the coordinator's addresses to become ready, for at
  most ``connect_timeout_s`` (default 10 s) if it never reached a coordinator,
  else for the rest of its retry budget (``Backoff.give_up_s``, 30 s). Then it
  raises :class:`~fleetflow.errors.CoordinatorUnreachable`, which says per
  address whether it was refused, unresolvable or silent.
- **Every call has a deadline**: ``RPC_TIMEOUT_S`` (60 s) for plain calls, the
  wait plus 10 s for long polls; the caller's own timeout, when shorter, wins.
- **Keepalive** pings the coordinator while a call or stream is open, so a
  dead or frozen coordinator is noticed within :attr:`KeepAlive.bound_s`
  (default 20 s) and the call is retried.
- **Several addresses** (``A:P,B:P``, or a name with several addresses): calls
  go to one; on ``UNAVAILABLE`` (it went away, or it is a standby) the next
  call moves to another, first to the active one a standby names.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from fleetflow._retry import Backoff, RetryBudget, remaining_s
from fleetflow._transport import Transport
from fleetflow.addresses import Address, standby_hint
from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
from fleetflow.credentials import Credentials
from fleetflow.errors import ConnectFailure, CoordinatorUnreachable

__all__ = [
    "Connection",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "KeepAlive",
    "MAX_MESSAGE_BYTES",
    "MIN_KEEPALIVE_TIME_S",
    "RPC_TIMEOUT_S",
    "channel_options",
    "client_log",
]


def client_log() -> structlog.typing.FilteringBoundLogger:
    """The client's logger, bound at each use (so ``structlog.testing.capture_logs`` sees it)."""
    return structlog.get_logger("fleetflow.client")


#: Largest message sent or received, bytes (flow specs and results can be big).
MAX_MESSAGE_BYTES = 256 * 2**20
#: Deadline of one unary RPC that does not long-poll, seconds.
RPC_TIMEOUT_S = 60.0
#: How long a client that never reached a coordinator tries to connect, seconds.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: The closest keepalive pings the coordinator accepts, seconds (its server's
#: ``MIN_PEER_PING_INTERVAL_S``).
MIN_KEEPALIVE_TIME_S = 5.0
#: While connecting, channel states are polled this often at first (doubling), seconds.
_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.1
#: A coordinator's last UNAVAILABLE answer is named in CoordinatorUnreachable
#: only if it came at most this long before, seconds.
_LAST_ANSWER_S = 120.0
#: An address that just answered UNAVAILABLE is used again only when no other
#: is ready within this long, seconds.
_AVOID_GRACE_S = 0.5
#: A later address that is ready is used before an earlier one that is still
#: connecting only after this long, seconds (the list is in order of preference).
_ORDER_GRACE_S = 0.25
#: Names that did not resolve are looked up again this often while connecting, seconds.
_RERESOLVE_S = 1.0
#: The longest name lookup while connecting, seconds.
_RESOLVE_TIMEOUT_S = 5.0
#: Time for the TCP probes that tell why no address connected, seconds (all together).
_PROBE_BUDGET_S = 1.0

_READY = grpc.ChannelConnectivity.READY
_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class KeepAlive:
    """gRPC keepalive of the client's channels: how soon a dead or frozen coordinator is noticed.

    While a call or a watch stream is open, the client pings the coordinator
    after ``time_s`` seconds without a ping and drops the connection when an
    answer takes longer than ``timeout_s``; the call then fails with
    ``UNAVAILABLE`` and is retried (a watch resumes after its last event). The
    coordinator accepts pings 5 s apart or more (its
    ``MIN_PEER_PING_INTERVAL_S``; closer ones earn a GOAWAY).

    Attributes:
        time_s: Seconds between pings while a call is open; at least 5. Default 10.
        timeout_s: Seconds a ping may go unanswered; more than 0. Default 10.

    Raises:
        ValueError: a value is out of range (the message names it).
    """

    time_s: float = 10.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_s) and self.time_s >= MIN_KEEPALIVE_TIME_S):
            raise ValueError(
                f"KeepAlive.time_s must be at least {MIN_KEEPALIVE_TIME_S:g} seconds "
                f"(the coordinator refuses closer pings), got {self.time_s!r}"
            )
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"KeepAlive.timeout_s must be > 0 seconds, got {self.timeout_s!r}")

    @property
    def bound_s(self) -> float:
        """Longest time a dead or frozen coordinator goes unnoticed, seconds."""
        return self.time_s + self.timeout_s


def channel_options(keepalive: KeepAlive, authority: str | None = None) -> tuple:
    """The gRPC channel options of a client channel.

    Args:
        keepalive: The keepalive settings.
        authority: The ``:authority`` to send (the name the user gave) when the
            channel dials one of the IP addresses it resolved to.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # gRPC's own reconnect backoff grows to 120 s by default; a restarted
        # coordinator should be found again within a second of listening.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.keepalive_time_ms", round(keepalive.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive.timeout_s * 1000)),
        # Any unanswered ping ends the connection after the same time: while a
        # flow-control (BDP) ping is unanswered no keepalive ping is sent, and
        # its own timeout is 60 s by default.
        ("grpc.http2.ping_timeout_ms", round(keepalive.timeout_s * 1000)),
        # Keep pinging a quiet watch stream (the default stops after 2 pings
        # without data), but not an idle connection.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return tuple(options)


def rpc_timeout_s(base_s: float, deadline: float | None) -> float:
    """The gRPC timeout of one call: ``base_s``, shortened to the caller's deadline (+1 s)."""
    remaining = remaining_s(deadline)
    return base_s if remaining is None else max(0.05, min(base_s, remaining + 1.0))


class _Endpoint:
    """One IP address of the coordinator with its channel and stub."""

    __slots__ = ("given", "address", "channel", "stub")

    def __init__(self, given: Address, address: Address, channel: Any) -> None:
        self.given = given
        self.address = address
        self.channel = channel
        self.stub = pb_grpc.CoordinatorServiceStub(channel)

    @property
    def label(self) -> str:
        return str(self.given) if self.given == self.address else f"{self.given} ({self.address})"


class Connection:
    """Channels to a coordinator's addresses, and the retry loop around every call.

    With an :class:`~fleetflow._transport.AioTransport`, use it from the event
    loop it first ran on; with a blocking one, from any thread.

    Args:
        addresses: The coordinator's addresses, in order of preference.
        transport: How calls reach gRPC (asyncio or blocking).
        backoff: Retry policy for ``UNAVAILABLE``.
        rng: Jitter source.
        connect_timeout_s: Connect bound of a client that never reached a
            coordinator, seconds.
        keepalive: Keepalive of the channels.
        credentials: TLS and token of the channels.

    Raises:
        CredentialsError: a credential file is unusable, or a token would
            travel in plaintext beyond loopback.
    """

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        transport: Transport,
        backoff: Backoff,
        rng: random.Random,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        keepalive: KeepAlive | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.addresses = tuple(addresses)
        self._names = any(not a.is_ip for a in self.addresses)
        self.credentials = credentials or Credentials()
        for given in self.addresses:  # a token goes in plaintext to loopback only: fail now
            self.credentials.channel_credentials(str(given), with_token=False)
        self.transport = transport
        self.backoff = backoff
        self.rng = rng
        self.connect_timeout_s = connect_timeout_s
        self.keepalive = keepalive or KeepAlive()
        #: Whether any address was ever connected (then losses get the retry budget).
        self.reached = False
        self._lock = threading.Lock()
        self._closed = False
        self._channels: dict[tuple[Address, Address], _Endpoint] = {}
        self._endpoints: list[_Endpoint] = []
        self._unresolved: dict[Address, str] = {}
        self._resolved_at = -math.inf
        self._current: _Endpoint | None = None
        self._last: _Endpoint | None = None
        self._avoid: _Endpoint | None = None
        self._prefer: Address | None = None
        #: (monotonic time, details) of the first UNAVAILABLE answer since the
        #: last call that succeeded: why the coordinator went away, if it said.
        self._last_answer: tuple[float, str] | None = None

    # ------------------------------------------------------------------ calls

    async def unary(
        self,
        method: str,
        request: Any,
        *,
        flow_run_id: str | None = None,
        deadline: float | None = None,
        timeout_s: float = RPC_TIMEOUT_S,
    ) -> Any:
        """Call ``CoordinatorService.<method>``, connecting first and retrying ``UNAVAILABLE``.

        Args:
            method: The RPC's name, e.g. ``"GetFlowRun"``.
            request: Its request message.
            flow_run_id: The flow run the call is about (for error messages).
            deadline: The caller's deadline on the ``time.monotonic`` clock.
            timeout_s: Deadline of one attempt, seconds (shortened to ``deadline``).

        Returns:
            The response message.

        Raises:
            TimeoutError: ``deadline`` passed.
            CoordinatorUnreachable: no address connected within the bound.
            FlowRunNotFound: NOT_FOUND for ``flow_run_id``.
            InvalidFlowError: INVALID_ARGUMENT for a call about no flow run.
            RPCError: any other failure, or ``UNAVAILABLE`` past the budget.
            ValueError: the client was closed.
        """
        budget = RetryBudget(self.backoff, deadline, self.rng)
        while True:
            endpoint = self._current
            if endpoint is None or self.transport.state(endpoint.channel, False) is not _READY:
                endpoint = await self.connect(budget)
            call = getattr(endpoint.stub, method)
            try:
                response = await self.transport.unary(
                    call, request, rpc_timeout_s(timeout_s, deadline)
                )
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code is _UNAVAILABLE:
                    self.lost(endpoint, exc.details() or "")  # type: ignore[attr-defined]
                delay = budget.delay_s(code)
                if delay is None:
                    raise budget.error(exc, flow_run_id) from exc
            else:
                self._avoid = None
                self._last_answer = None
                return response
            await self.transport.sleep(delay)

    async def open_stream(
        self, method: str, request: Any, budget: RetryBudget
    ) -> tuple[_Endpoint, Any]:
        """Connect (within ``budget``) and open the server stream ``CoordinatorService.<method>``.

        Returns:
            The endpoint it went to, and an async iterator of responses with
            a ``cancel()`` method.

        Raises:
            TimeoutError: the budget's deadline passed while connecting.
            CoordinatorUnreachable: no address connected within the bound.
        """
        endpoint = self._current
        if endpoint is None or self.transport.state(endpoint.channel, False) is not _READY:
            endpoint = await self.connect(budget)
        return endpoint, self.transport.stream(getattr(endpoint.stub, method), request)

    async def ready_endpoint(self) -> _Endpoint:
        """The endpoint calls go to now, connecting first if need be (see :meth:`connect`)."""
        endpoint = self._current
        if endpoint is None or self.transport.state(endpoint.channel, False) is not _READY:
            endpoint = await self.connect(RetryBudget(self.backoff, None, self.rng))
        return endpoint

    def lost(self, endpoint: _Endpoint, details: str) -> None:
        """Note that ``endpoint`` answered ``UNAVAILABLE``: the next call connects anew.

        With several addresses the next call prefers another one: the active
        coordinator a standby named, else any other that is ready.
        """
        if self._current is endpoint:
            client_log().warning("coordinator_unavailable", address=endpoint.label, details=details)
        if details and self._last_answer is None:
            self._last_answer = (time.monotonic(), details)
        self._current = None
        hint = standby_hint(details)
        known = {a for ep in self._endpoints for a in (ep.given, ep.address)}
        self._prefer = hint if hint in known else None
        if len(self._endpoints) > 1:
            self._avoid = endpoint

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` through the transport (the only way the client waits)."""
        await self.transport.sleep(seconds)

    async def close(self) -> None:
        """Close every channel; calls in flight end, later calls raise ValueError."""
        with self._lock:
            self._closed = True
            endpoints = list(self._channels.values())
            self._channels.clear()
            self._endpoints, self._current, self._last = [], None, None
        for endpoint in endpoints:
            await self.transport.close(endpoint.channel)

    # ------------------------------------------------------------- connecting

    async def connect(self, budget: RetryBudget) -> _Endpoint:
        """Wait until one of the addresses is ready, within the connect bound.

        Raises:
            TimeoutError: the caller's deadline passed first.
            CoordinatorUnreachable: the bound passed first.
            ValueError: the client was closed.
        """
        start = time.monotonic()
        if self.reached:
            end = budget.give_up_at(start)
        else:
            end = start + self.connect_timeout_s
        by_deadline = budget.deadline is not None and budget.deadline < end
        if by_deadline:
            end = budget.deadline  # type: ignore[assignment]
        if not self._endpoints or self._names:
            await self._resolve(end)  # names again at each connect: a failover may move them
        pause = _POLL_FIRST_S
        while True:
            chosen = self._pick(time.monotonic() - start)
            if chosen is not None:
                return self._use(chosen)
            now = time.monotonic()
            if now >= end:
                break
            if self._unresolved and now - self._resolved_at >= _RERESOLVE_S:
                await self._resolve(end)
            await self.transport.sleep(min(pause, max(0.0, end - time.monotonic())))
            pause = min(2 * pause, _POLL_MAX_S)
        if by_deadline:
            budget.deadline_hit = True
            where = ", ".join(str(a) for a in self.addresses)
            raise TimeoutError(f"timed out connecting to the coordinator at {where}")
        failures = await self._diagnose(time.monotonic() - start)
        chosen = self._pick(math.inf)
        if chosen is not None:  # ready after all, while we looked
            return self._use(chosen)
        said = self._last_answer
        recent = said is not None and time.monotonic() - said[0] <= _LAST_ANSWER_S
        raise CoordinatorUnreachable(
            failures,
            time.monotonic() - start,
            said[1] if recent else "",  # type: ignore[index]
        )

    def _use(self, endpoint: _Endpoint) -> _Endpoint:
        if self._last is not None and endpoint is not self._last:
            client_log().info(
                "coordinator_switched", address=endpoint.label, previous=self._last.label
            )
        self._current = self._last = endpoint
        self._prefer = None
        self.reached = True
        return endpoint

    def _pick(self, elapsed_s: float) -> _Endpoint | None:
        """The ready endpoint to use now, or None; asks every channel to connect.

        In order: the active coordinator a standby named; the endpoint used
        last; the first ready one in the order given, waiting up to
        ``_ORDER_GRACE_S`` for earlier ones that are still connecting; and an
        endpoint that just answered ``UNAVAILABLE`` only when it is the only
        one ready after ``_AVOID_GRACE_S``.
        """
        states = [(ep, self.transport.state(ep.channel, True)) for ep in self._endpoints]
        ready = [ep for ep, state in states if state is _READY]
        if not ready:
            return None
        if self._prefer is not None:
            for ep in ready:
                if self._prefer in (ep.given, ep.address):
                    return ep
        if self._last in ready and self._last is not self._avoid:
            return self._last
        for ep, state in states:
            if ep is self._avoid:
                continue
            if state is _READY:
                return ep
            if state is not _FAILURE and elapsed_s < _ORDER_GRACE_S:
                return None  # an earlier address may still connect
        return ready[0] if elapsed_s >= _AVOID_GRACE_S else None

    async def _resolve(self, end: float) -> None:
        """(Re)build the endpoint list from the addresses, resolving names."""
        endpoints: list[_Endpoint] = []
        unresolved: dict[Address, str] = {}
        for given in self.addresses:
            if given.is_ip:
                ips: tuple[Address, ...] = (given,)
            else:
                timeout = max(0.05, min(_RESOLVE_TIMEOUT_S, end - time.monotonic()))
                try:
                    ips = await self.transport.resolve(given, timeout)
                except OSError as exc:
                    unresolved[given] = str(exc) or type(exc).__name__
                    ips = tuple(ep.address for ep in self._endpoints if ep.given == given)
            endpoints += [self._endpoint(given, ip) for ip in ips]
        self._endpoints, self._unresolved = endpoints, unresolved
        self._resolved_at = time.monotonic()

    def _endpoint(self, given: Address, ip: Address) -> _Endpoint:
        with self._lock:
            if self._closed:
                raise ValueError("this client is closed")
            endpoint = self._channels.get((given, ip))
            if endpoint is None:
                authority = None if given == ip else str(given)
                options = channel_options(self.keepalive, authority)
                channel = self.transport.channel(str(ip), options, self.credentials)
                endpoint = self._channels[(given, ip)] = _Endpoint(given, ip, channel)
            return endpoint

    async def _diagnose(self, waited_s: float) -> tuple[ConnectFailure, ...]:
        """Why each address failed: refused, unresolvable, silent, unreachable or failed."""
        failures = [
            ConnectFailure(str(given), "unresolvable", error)
            for given, error in self._unresolved.items()
        ]
        probe_s = max(0.2, _PROBE_BUDGET_S / max(1, len(self._endpoints)))
        for ep in self._endpoints:
            state = self.transport.state(ep.channel, False)
            outcome = await self.transport.probe(ep.address, probe_s)
            if outcome == "refused":
                kind, detail = "refused", "connection refused: nothing listens on that port"
            elif outcome == "timeout":
                kind, detail = "silent", f"no answer to a TCP connection within {probe_s:g} s"
            elif outcome == "open" and state is _FAILURE:
                kind = "failed"
                detail = (
                    "TCP connects but no gRPC connection was made in time "
                    "(a TLS or protocol mismatch, or a coordinator still starting)"
                )
            elif outcome == "open":
                kind = "silent"
                detail = f"accepts TCP connections but did not answer within {waited_s:.1f} s"
            else:
                kind, detail = "unreachable", outcome
            failures.append(ConnectFailure(ep.label, kind, detail))
        return tuple(failures)
