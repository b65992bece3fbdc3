"""The client side of TransferService: chunked uploads and downloads, fan-in pages.

Used by workers and clients for the store the coordinator hosts on its own
disk when they cannot reach that folder directly (another machine). Every
message carries at most ``transfer_chunk_bytes`` of payload (1 MiB), so
uploads and downloads of any size stream through with bounded memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import transfer_service_pb2_grpc as ts_grpc
from fleetflow.errors import StoredObjectMissing
from fleetflow.store.codec import Frame, frame_size, new_hasher
from fleetflow.store.objects import ObjectStore
from fleetflow.store.refs import StoredRef, ref_from_proto

__all__ = ["TransferClient"]

#: Seconds one transfer RPC may take per MiB moved, on top of a base of 60 s.
_S_PER_MIB = 2.0


def _timeout_s(size: int) -> float:
    return 60.0 + _S_PER_MIB * size / (1 << 20)


class TransferClient:
    """Calls TransferService on one channel.

    Args:
        channel: A ``grpc.aio`` channel to the coordinator.
        chunk_bytes: Payload bytes per message (the coordinator's
            ``transfer_chunk_bytes``).
    """

    def __init__(self, channel: grpc.aio.Channel, chunk_bytes: int = 1 << 20) -> None:
        self.stub = ts_grpc.TransferServiceStub(channel)
        self.chunk_bytes = chunk_bytes

    async def store_info(self, timeout_s: float = 30.0) -> ts.StoreInfo:
        """Ask the coordinator where the store is."""
        info = await self.stub.GetStoreInfo(ts.GetStoreInfoRequest(), timeout=timeout_s)
        if info.transfer_chunk_bytes:
            self.chunk_bytes = int(info.transfer_chunk_bytes)
        return info

    async def upload_file(self, key: str, local: ObjectStore) -> StoredRef:
        """Upload the object ``key`` of a local store (a spool) under the same key.

        Raises:
            grpc.aio.AioRpcError: the coordinator refused it (e.g. RESOURCE_EXHAUSTED).
            StoredObjectMissing: the local object is not there.
        """
        size = local.size_of(key)
        if size is None:
            raise StoredObjectMissing(key, local.url_of(key), "not in the local spool")
        chunks = local.read_raw(key)
        chunk_bytes = self.chunk_bytes

        async def messages() -> AsyncIterator[ts.WriteObjectRequest]:
            hasher = new_hasher()
            sent = 0
            first = True
            try:
                while True:
                    data = await asyncio.to_thread(next, chunks, None)
                    if data is None:
                        break
                    for i in range(0, len(data), chunk_bytes):
                        piece = data[i : i + chunk_bytes]
                        hasher.update(piece)
                        sent += len(piece)
                        yield ts.WriteObjectRequest(key=key if first else "", data=piece)
                        first = False
            finally:
                chunks.close()
            yield ts.WriteObjectRequest(
                key=key if first else "", last=True, size=sent, checksum=hasher.digest()
            )

        response = await self.stub.WriteObject(messages(), timeout=_timeout_s(size))
        return ref_from_proto(response.ref)

    async def upload_frames(self, key: str, frames: Sequence[Frame]) -> list[StoredRef]:
        """Upload frames (a pack) as one object straight from memory; one ref per frame."""
        chunk_bytes = self.chunk_bytes
        refs: list[StoredRef] = []
        total = sum(frame_size(f) for f in frames)

        async def messages() -> AsyncIterator[ts.WriteObjectRequest]:
            whole = new_hasher()
            pending = bytearray()
            first = True
            offset = 0
            for frame in frames:
                hasher = new_hasher()
                size = 0
                for part in frame:
                    view = memoryview(part).cast("B")
                    hasher.update(view)
                    whole.update(view)
                    size += view.nbytes
                    for i in range(0, view.nbytes, chunk_bytes):
                        pending += view[i : i + chunk_bytes]
                        while len(pending) >= chunk_bytes:
                            data = bytes(pending[:chunk_bytes])
                            del pending[:chunk_bytes]
                            yield ts.WriteObjectRequest(key=key if first else "", data=data)
                            first = False
                refs.append(StoredRef(key, size, hasher.digest(), offset))
                offset += size
            if pending:
                yield ts.WriteObjectRequest(key=key if first else "", data=bytes(pending))
                first = False
            yield ts.WriteObjectRequest(
                key=key if first else "", last=True, size=offset, checksum=whole.digest()
            )

        await self.stub.WriteObject(messages(), timeout=_timeout_s(total))
        return refs

    async def download(self, key: str, local: ObjectStore, size_hint: int = 0) -> None:
        """Copy the object ``key`` into a local store (a spool) under the same key.

        The consumer verifies what it reads there against its reference.

        Raises:
            StoredObjectMissing: the coordinator has no such object.
            grpc.aio.AioRpcError: another failure.
        """
        call = self.stub.ReadObject(ts.ReadObjectRequest(key=key), timeout=_timeout_s(size_hint))
        try:
            with local.raw_writer(key) as out:
                async for message in call:
                    await asyncio.to_thread(out.write, message.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise StoredObjectMissing(key, f"coordinator:{key}", "not found") from None
            raise

    async def node_values(self, flow_run_id: str, node: int, count: int) -> list[Any]:
        """A completed map node's results in order: ``bytes`` (inline) or ``StoredRef`` each.

        Raises:
            grpc.aio.AioRpcError: the node is unknown or not complete.
            ValueError: the pages do not add up to ``count`` values.
        """
        out: list[Any] = []
        call = self.stub.ReadNodeValues(
            ts.ReadNodeValuesRequest(flow_run_id=flow_run_id, node=node, start=0),
            timeout=_timeout_s(count * 100),
        )
        async for page in call:
            if page.start != len(out):
                raise ValueError(f"node values: page starts at {page.start}, expected {len(out)}")
            for value in page.values:
                kind = value.WhichOneof("kind")
                if kind == "pickled":
                    out.append(value.pickled)
                elif kind == "ref":
                    out.append(ref_from_proto(value.ref))
                else:
                    raise ValueError(f"node values: unexpected value kind {kind!r}")
        if len(out) != count:
            raise ValueError(f"node values: received {len(out)} values, expected {count}")
        return out
