"""How the client's calls reach gRPC: on an asyncio loop, or blocking the calling thread.

Every call of the client is written once, as a coroutine of
:class:`~fleetflow.AsyncClient`, and does its waiting only through a transport
(never through ``asyncio`` itself):

- :class:`AioTransport` (``AsyncClient``) uses ``grpc.aio`` and
  ``asyncio.sleep``: the coroutines suspend on the running loop.
- :class:`BlockingTransport` (``Client``) uses gRPC's blocking API and
  ``time.sleep``: its awaitables finish without ever suspending, so
  :func:`drive` runs a whole call to its end with one ``send(None)`` in the
  caller's thread. No event loop and no thread hop is involved, so a blocking
  call costs what a plain blocking gRPC call costs, and it works from any
  thread, including one that runs an asyncio loop of its own (it blocks that
  loop, as any blocking call does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import grpc.aio

from fleetflow.addresses import Address, resolve
from fleetflow.credentials import Credentials

__all__ = ["AioTransport", "BlockingTransport", "Transport", "drive"]

T = TypeVar("T")

_STATES = {state.value[0]: state for state in grpc.ChannelConnectivity}


class AioTransport:
    """``grpc.aio`` channels; waits suspend on the running asyncio loop."""

    blocking = False

    def channel(self, target: str, options: tuple, credentials: Credentials) -> grpc.aio.Channel:
        """A new channel to ``target``, opened inside the running loop, with ``credentials``."""
        return credentials.aio_channel(target, options)

    def state(self, channel: grpc.aio.Channel, try_to_connect: bool) -> grpc.ChannelConnectivity:
        """The channel's connectivity now; ``try_to_connect`` leaves IDLE."""
        return channel.get_state(try_to_connect)

    async def unary(self, method: Callable[..., Any], request: Any, timeout_s: float) -> Any:
        """One unary call with a deadline ``timeout_s`` seconds away."""
        return await method(request, timeout=timeout_s)

    def stream(self, method: Callable[..., Any], request: Any) -> Any:
        """Open a server stream: an async iterator of responses with ``cancel()``."""
        return method(request)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        await asyncio.sleep(seconds)

    async def resolve(self, address: Address, timeout_s: float) -> tuple[Address, ...]:
        """:func:`~fleetflow.addresses.resolve` in a thread, waiting at most ``timeout_s``.

        Raises:
            OSError: the name does not resolve, or not within ``timeout_s``.
        """
        try:
            return await asyncio.wait_for(asyncio.to_thread(resolve, address), timeout_s)
        except TimeoutError:
            raise OSError(f"no answer from the resolver within {timeout_s:g} s") from None

    async def probe(self, address: Address, timeout_s: float) -> str:
        """Try a plain TCP connection: ``"open"``, ``"refused"``, ``"timeout"`` or the OS error."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port), timeout_s
            )
        except (TimeoutError, OSError) as exc:
            return _probe_outcome(exc)
        writer.close()
        return "open"

    async def close(self, channel: grpc.aio.Channel) -> None:
        """Close a channel; its calls in flight end."""
        await channel.close()


class _BlockingStream:
    """A blocking server stream behind the async-iterator interface (never suspends)."""

    def __init__(self, call: Iterator[Any]) -> None:
        self._call = call

    def __aiter__(self) -> _BlockingStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._call)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        self._call.cancel()  # type: ignore[attr-defined]


class BlockingTransport:
    """Blocking gRPC channels; its awaitables never suspend (see :func:`drive`)."""

    blocking = True

    def channel(self, target: str, options: tuple, credentials: Credentials) -> grpc.Channel:
        """A new channel to ``target``, shared by the calling threads, with ``credentials``."""
        return credentials.channel(target, options)

    def state(self, channel: grpc.Channel, try_to_connect: bool) -> grpc.ChannelConnectivity:
        """The channel's connectivity now; ``try_to_connect`` leaves IDLE.

        gRPC's blocking API offers only callbacks for this; the channel's core
        object answers at once, as ``grpc.aio.Channel.get_state`` does (under
        the interceptor that adds a token, when there is one).
        """
        core: Any = channel
        while not hasattr(core, "check_connectivity_state"):
            core = core._channel
        return _STATES[core.check_connectivity_state(try_to_connect)]

    async def unary(self, method: Callable[..., Any], request: Any, timeout_s: float) -> Any:
        """One unary call with a deadline ``timeout_s`` seconds away (blocks)."""
        return method(request, timeout=timeout_s)

    def stream(self, method: Callable[..., Any], request: Any) -> _BlockingStream:
        """Open a server stream; each step blocks until a response arrives."""
        return _BlockingStream(method(request))

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (blocks)."""
        time.sleep(seconds)

    async def resolve(self, address: Address, timeout_s: float) -> tuple[Address, ...]:
        """:func:`~fleetflow.addresses.resolve` in a helper thread, waiting at most ``timeout_s``.

        Raises:
            OSError: the name does not resolve, or not within ``timeout_s``.
        """
        future = _resolver().submit(resolve, address)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise OSError(f"no answer from the resolver within {timeout_s:g} s") from None

    async def probe(self, address: Address, timeout_s: float) -> str:
        """Try a plain TCP connection: ``"open"``, ``"refused"``, ``"timeout"`` or the OS error."""
        try:
            socket.create_connection((address.host, address.port), timeout=timeout_s).close()
        except OSError as exc:
            return _probe_outcome(exc)
        return "open"

    async def close(self, channel: grpc.Channel) -> None:
        """Close a channel; its calls in flight (also in other threads) end."""
        channel.close()


Transport = AioTransport | BlockingTransport

_RESOLVER: concurrent.futures.ThreadPoolExecutor | None = None
_RESOLVER_LOCK = threading.Lock()


def _resolver() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for blocking name lookups (``getaddrinfo`` has no timeout of its own)."""
    global _RESOLVER
    with _RESOLVER_LOCK:
        if _RESOLVER is None:
            _RESOLVER = concurrent.futures.ThreadPoolExecutor(4, "fleetflow-resolve")
        return _RESOLVER


def _probe_outcome(exc: BaseException) -> str:
    """A probe's failure in words: ``"refused"``, ``"timeout"`` or the OS error's text."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def drive(awaitable: Awaitable[T]) -> T:
    """Run an awaitable that waits only through a :class:`BlockingTransport`, to its end.

    Args:
        awaitable: A coroutine (or an async generator step) of the client.

    Returns:
        Its result; its exception propagates.

    Raises:
        RuntimeError: it suspended, i.e. it awaited something other than the
            transport (a bug: every wait of the client goes through it).
    """
    steps = awaitable.__await__()
    try:
        yielded = steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise RuntimeError(f"a blocking client call suspended on {yielded!r}")
