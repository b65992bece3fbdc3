"""The client's connection to the coordinator: channel, stub and the retry loop of every call.

Channel options, credentials and failover have one home here:
:class:`Connection` opens the channel on first use (through its transport,
see ``_transport.py``), runs unary calls with their deadline and retries, and
opens streams. It is written once and serves both clients.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import grpc

from fleetflow._retry import Backoff, RetryBudget, remaining_s
from fleetflow._transport import Transport
from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
from fleetflow.credentials import Credentials

__all__ = ["CHANNEL_OPTIONS", "Connection", "MAX_MESSAGE_BYTES", "RPC_TIMEOUT_S"]

#: Largest message sent or received, bytes (flow specs and results can be big).
MAX_MESSAGE_BYTES = 256 * 2**20
#: Deadline of one unary RPC that does not long-poll, seconds.
RPC_TIMEOUT_S = 60.0

CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's own reconnect backoff grows to 120 s by default; a restarted
    # coordinator should be found again within our retry budget.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def rpc_timeout_s(base_s: float, deadline: float | None) -> float:
    """The gRPC timeout of one call: ``base_s``, shortened to the caller's deadline (+1 s)."""
    remaining = remaining_s(deadline)
    return base_s if remaining is None else max(0.05, min(base_s, remaining + 1.0))


class Connection:
    """The channel to one coordinator and the retry loop around every call.

    With an :class:`~fleetflow._transport.AioTransport`, use it from the event
    loop it first ran on; with a blocking one, from any thread.

    Args:
        address: The coordinator's ``host:port``.
        transport: How calls reach gRPC (asyncio or blocking).
        backoff: Retry policy for ``UNAVAILABLE``.
        rng: Jitter source.
        credentials: TLS and token of the channels.

    Raises:
        CredentialsError: a credential file is unusable, or a token would
            travel in plaintext beyond loopback.
    """

    def __init__(
        self,
        address: str,
        *,
        transport: Transport,
        backoff: Backoff,
        rng: random.Random,
        credentials: Credentials,
    ) -> None:
        self.address = address
        self.credentials = credentials
        self._channel_credentials = credentials.channel_credentials(address)  # fail now
        self.transport = transport
        self.backoff = backoff
        self.rng = rng
        self._lock = threading.Lock()
        self._closed = False
        self._channel: Any = None
        self._stub: pb_grpc.CoordinatorServiceStub | None = None

    @property
    def stub(self) -> pb_grpc.CoordinatorServiceStub:
        """The CoordinatorService stub; opens the channel on first use.

        Raises:
            ValueError: the connection was closed.
        """
        stub = self._stub
        if stub is None:
            with self._lock:
                if self._closed:
                    raise ValueError("this client is closed")
                if self._stub is None:
                    self._channel = self.transport.channel(
                        self.address,
                        (*CHANNEL_OPTIONS, *self.credentials.options()),
                        self._channel_credentials,
                    )
                    self._stub = pb_grpc.CoordinatorServiceStub(self._channel)
                stub = self._stub
        return stub

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` through the transport (the only way the client waits)."""
        await self.transport.sleep(seconds)

    async def close(self) -> None:
        """Close the channel (if it was opened); later calls raise ValueError."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await self.transport.close(channel)

    async def unary(
        self,
        method: str,
        request: Any,
        *,
        flow_run_id: str | None = None,
        deadline: float | None = None,
        timeout_s: float = RPC_TIMEOUT_S,
    ) -> Any:
        """Call ``CoordinatorService.<method>``, retrying ``UNAVAILABLE`` within the budget.

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
            FlowRunNotFound: NOT_FOUND for ``flow_run_id``.
            InvalidFlowError: INVALID_ARGUMENT for a call about no flow run.
            RPCError: any other failure, or ``UNAVAILABLE`` past the budget.
        """
        budget = RetryBudget(self.backoff, deadline, self.rng)
        while True:
            call = getattr(self.stub, method)
            try:
                timeout = rpc_timeout_s(timeout_s, deadline)
                return await self.transport.unary(call, request, timeout)
            except grpc.RpcError as exc:
                delay = budget.delay_s(exc.code())  # type: ignore[attr-defined]
                if delay is None:
                    raise budget.error(exc, flow_run_id) from exc
            await self.transport.sleep(delay)

    def stream(self, method: str, request: Any) -> Any:
        """Open a server stream ``CoordinatorService.<method>`` (no retries here).

        Returns:
            An async iterator of responses with a ``cancel()`` method.
        """
        return self.transport.stream(getattr(self.stub, method), request)
