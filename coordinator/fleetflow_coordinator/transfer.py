"""TransferService: the result store's address, hosted uploads and downloads, fan-in pages.

Every message this service sends or accepts carries at most
``TRANSFER_CHUNK_BYTES`` (1 MiB) of payload, or a page of at most
``PAGE_BYTES`` (4 MiB) of values, so a 200 MB upload or a 1 GB fan-in never
makes a large message and never sits in the coordinator's memory: uploads go
to disk chunk by chunk, downloads are read from disk chunk by chunk, and
pages are built from the core's records as they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import transfer_service_pb2_grpc
from fleetflow.store import StoredRef
from fleetflow.store.codec import new_hasher
from fleetflow.store.refs import ref_to_proto, valid_key

from fleetflow_coordinator.core.model import TaskRunState
from fleetflow_coordinator.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidRequest,
    LimitExceeded,
    NotFound,
)
from fleetflow_coordinator.results import TRANSFER_CHUNK_BYTES, ResultStore

__all__ = ["TransferServicer", "PAGE_BYTES", "PAGE_VALUES", "node_value_pages"]

log = structlog.get_logger(__name__)

#: A ReadNodeValues page holds at most this many bytes of inline values...
PAGE_BYTES = 4 << 20
#: ... and at most this many values.
PAGE_VALUES = 20_000
#: What one reference costs in a page, bytes (key, sizes, checksum).
_REF_COST = 96


def node_value_pages(children: list[Any], start: int) -> Any:
    """Split a map node's results from ``start`` into bounded pages.

    Yields:
        ``(first index, [result, ...])`` per page; a result is bytes or a StoredRef.

    Raises:
        ValueError: a task run has no result (the node is not complete).
    """
    page: list[Any] = []
    first = start
    size = 0
    for i in range(start, len(children)):
        tr = children[i]
        value = tr.result
        if tr.state != TaskRunState.COMPLETED or value is None:
            raise ValueError(f"task run {tr.id} (index {i}) has no result yet")
        cost = len(value) if isinstance(value, bytes) else _REF_COST
        if page and (size + cost > PAGE_BYTES or len(page) >= PAGE_VALUES):
            yield first, page
            page, first, size = [], i, 0
        page.append(value)
        size += cost
    if page:
        yield first, page


class TransferServicer(transfer_service_pb2_grpc.TransferServiceServicer):
    """Serves the result store's RPCs.

    Args:
        runtime: The coordinator's runtime (its ``core`` is read, never changed).
        results: The result store; None answers FAILED_PRECONDITION to
            everything but GetStoreInfo (a coordinator without one).
    """

    def __init__(self, runtime: Any, results: ResultStore | None) -> None:
        self.rt = runtime
        self.results = results

    def _hosted(self) -> ResultStore:
        results = self.results
        if results is None:
            raise FailedPrecondition("this coordinator has no result store")
        if not results.hosted:
            raise FailedPrecondition(
                f"the result store is {results.objects.url}, not hosted by the coordinator: "
                "read and write it directly"
            )
        return results

    async def GetStoreInfo(  # noqa: N802 - generated name
        self, request: ts.GetStoreInfoRequest, context: grpc.aio.ServicerContext
    ) -> ts.StoreInfo:
        """Where the store is and the sizes that apply."""
        if self.results is None:
            return ts.StoreInfo(transfer_chunk_bytes=TRANSFER_CHUNK_BYTES)
        return self.results.info()

    async def WriteObject(  # noqa: N802
        self,
        request_iterator: AsyncIterator[ts.WriteObjectRequest],
        context: grpc.aio.ServicerContext,
    ) -> ts.WriteObjectResponse:
        """Receive one object in chunks; it becomes visible once size and checksum match."""
        results = self._hosted()
        objects = results.objects
        key = ""
        hasher = new_hasher()
        received = 0
        final: ts.WriteObjectRequest | None = None
        writer = None
        out = None
        try:
            async for message in request_iterator:
                if writer is None:
                    key = message.key
                    _check_key(key)
                    writer = objects.raw_writer(key)
                    out = await asyncio.to_thread(writer.__enter__)
                if message.data:
                    received += len(message.data)
                    if received % (64 * TRANSFER_CHUNK_BYTES) < len(message.data):
                        await self._check_space(results, key, received)
                    hasher.update(message.data)
                    await asyncio.to_thread(out.write, message.data)  # type: ignore[union-attr]
                if message.last:
                    final = message
                    break
            if writer is None or final is None:
                raise InvalidRequest(
                    f"upload of {key or 'an object'} ended before its last message"
                )
            digest = hasher.digest()
            if final.size != received or final.checksum != digest:
                raise DataLoss(
                    f"upload of {key}: received {received} bytes with checksum {digest.hex()}, "
                    f"the sender says {final.size} bytes with {final.checksum.hex()}"
                )
            existing = await asyncio.to_thread(objects.size_of, key)
            if existing is not None:
                same = (
                    existing == received
                    and await asyncio.to_thread(_digest_of, objects, key) == digest
                )
                if not same:
                    raise AlreadyExists(
                        f"stored object {key} exists with other bytes; keys are written once"
                    )
                await asyncio.to_thread(writer.__exit__, ValueError, ValueError("exists"), None)
                writer = None
            else:
                done, writer = writer, None
                await asyncio.to_thread(done.__exit__, None, None, None)
        finally:
            if writer is not None:  # aborted: drop the partial upload
                with contextlib.suppress(BaseException):
                    await asyncio.to_thread(writer.__exit__, ValueError, ValueError("abort"), None)
        return ts.WriteObjectResponse(ref=ref_to_proto(StoredRef(key, received, digest)))

    async def _check_space(self, results: ResultStore, key: str, received: int) -> None:
        free = await asyncio.to_thread(results.free_bytes)
        if free < results.min_free_bytes:
            raise LimitExceeded(
                f"upload of {key}: the coordinator's disk has {free} bytes free, under the "
                f"limit of {results.min_free_bytes} bytes (setting store_min_free_bytes); "
                f"{received} bytes were received and dropped"
            )

    async def ReadObject(  # noqa: N802
        self, request: ts.ReadObjectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ts.ReadObjectResponse]:
        """Send an object (or a byte range of it) in chunks."""
        results = self._hosted()
        _check_key(request.key)
        chunks = results.objects.read_raw(request.key, request.offset, request.length)
        try:
            while True:
                data = await asyncio.to_thread(next, chunks, None)
                if data is None:
                    return
                yield ts.ReadObjectResponse(data=data)
        finally:
            chunks.close()

    async def ReadNodeValues(  # noqa: N802
        self, request: ts.ReadNodeValuesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ts.ReadNodeValuesResponse]:
        """Send a completed map node's results in input order, page by page."""
        flow = self.rt.core.flows.get(request.flow_run_id)
        if flow is None:
            raise NotFound(f"no flow run {request.flow_run_id!r}")
        if not 0 <= request.node < len(flow.nodes):
            raise NotFound(f"flow run {request.flow_run_id} has no node {request.node}")
        children = flow.nodes[request.node].children
        pages = node_value_pages(children, request.start)
        while True:
            try:
                page = next(pages, None)
            except ValueError as exc:
                raise FailedPrecondition(str(exc)) from None
            if page is None:
                return
            first, values = page
            response = ts.ReadNodeValuesResponse(start=first)
            add = response.values.add
            for value in values:
                if isinstance(value, bytes):
                    add(pickled=value)
                else:
                    ref_to_proto(value, add().ref)
            yield response


def _check_key(key: str) -> None:
    if not valid_key(key):
        raise InvalidRequest(
            f"key {key[:300]!r}: must be runs/<flow_run_id>/... or submit/<idempotency_key>/... "
            "(letters, digits, '._-')"
        )


def _digest_of(objects: Any, key: str) -> bytes:
    hasher = new_hasher()
    for data in objects.read_raw(key):
        hasher.update(data)
    return hasher.digest()
