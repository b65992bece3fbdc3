"""A client's lazily opened way to the result store, shared by ``Client`` and ``AsyncClient``.

Nothing happens until a submission has a constant over the inline limit, or
a result is stored: then one ``GetStoreInfo`` call says where the store is,
and the session reads and writes it directly (a shared path, S3, the
coordinator's folder on this machine) or through the coordinator in chunks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.errors import PayloadTooLarge
from fleetflow.store.access import DEFAULT_INLINE_MAX_BYTES, StoreClient
from fleetflow.store.remote import TransferClient
from fleetflow.store.values import (
    ResultRef,
    externalize,
    largest_constant,
    load_value,
    needs_store,
    result_ref,
)

__all__ = ["StoreSession", "STORED_KINDS", "SESSION_CHANNEL_OPTIONS"]

T = TypeVar("T")

#: Options of a channel the session opens itself (the blocking client's): pages
#: of node values are up to 4 MiB of values plus their framing.
SESSION_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
)

#: ``Value`` kinds whose bytes are (partly) in the result store.
STORED_KINDS = frozenset({"ref", "item", "items", "values", "node_values"})


class StoreSession:
    """One client's access to the result store.

    Args:
        channel: Returns (awaitable) the ``grpc.aio`` channel calls go to now:
            the client's own, with its credentials (TLS, token). The session
            does not close it.
        direct: Use the coordinator-hosted folder directly when it is on this machine.
    """

    def __init__(
        self,
        channel: Callable[[], Awaitable[grpc.aio.Channel]],
        *,
        direct: bool = True,
        owns_channel: bool = False,
    ) -> None:
        self._get_channel = channel
        self.direct = direct
        self._owns_channel = owns_channel
        self._channel: grpc.aio.Channel | None = None
        self._transfer: TransferClient | None = None
        self._store: StoreClient | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _open(self) -> tuple[StoreClient | None, TransferClient]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            channel = await self._get_channel()
            if self._transfer is None or channel is not self._channel:
                self._channel = channel  # another coordinator after a failover
                self._transfer = TransferClient(channel)
                if self._store is not None:
                    self._store.transfer = self._transfer
            if self._store is None:
                info = await self._transfer.store_info()
                if info.url:
                    self._store = StoreClient(info, self._transfer, direct=self.direct)
            return self._store, self._transfer

    async def prepare_submit(self, request: cs.SubmitFlowRunRequest) -> None:
        """Move the spec's large constants into the store before it is sent (in place).

        Raises:
            PayloadTooLarge: a constant is over the inline limit and the
                coordinator has no result store.
            OSError, grpc.aio.AioRpcError: an upload failed.
        """
        spec = request.spec
        if not needs_store(spec, DEFAULT_INLINE_MAX_BYTES):
            return
        store, _ = await self._open()
        if store is None:
            raise PayloadTooLarge(
                "a flow constant",
                largest_constant(spec),
                DEFAULT_INLINE_MAX_BYTES,
                "inline_max_bytes; the coordinator has no result_store for larger ones",
            )
        await externalize(spec, store, request.idempotency_key)

    async def load(self, value: common_pb2.Value) -> Any:
        """Rebuild a result, downloading what is stored."""
        if value.WhichOneof("kind") not in STORED_KINDS:
            return await load_value(value, None, None)
        store, transfer = await self._open()
        return await load_value(value, store, transfer)

    async def ref(self, flow_run_id: str, value: common_pb2.Value) -> ResultRef:
        """Where a result is, without downloading it."""
        if value.WhichOneof("kind") not in STORED_KINDS:
            return await result_ref(flow_run_id, value, None, None)
        store, transfer = await self._open()
        return await result_ref(flow_run_id, value, store, transfer)

    async def aclose(self) -> None:
        """Delete a temporary spool; close the channel if the session opened it."""
        if self._store is not None:
            self._store.close()
            self._store = None
        channel, self._channel, self._transfer = self._channel, None, None
        if channel is not None and self._owns_channel:
            await channel.close()

    # ----------------------------------------------- blocking clients (Client)

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the session's private event loop thread and wait for it.

        The blocking ``Client`` drives its calls without an event loop; the
        store's transfers need one (gRPC's asyncio API, threads for file I/O),
        so they run on this loop, with a channel of their own opened there.
        """
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                ready.set()
                loop.run_forever()

            self._thread = threading.Thread(target=serve, name="fleetflow-store", daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop

        async def call() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def close(self) -> None:
        """Close a session used through :meth:`run`, and its loop thread."""
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = None
        self._thread = None
