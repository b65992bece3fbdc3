"""How one process (a worker, a client) reaches the result store.

:class:`StoreClient` picks the way from what the coordinator says
(``StoreInfo``):

* a store at a URL (``s3://``, a shared path): read and write it directly;
* the store the coordinator hosts, when its folder is visible here (the same
  machine; checked with the marker file): read and write that folder directly;
* the store the coordinator hosts, from another machine: write into a local
  *spool* folder and upload from there in chunks; download into the spool in
  chunks and read from there. The spool keeps recent objects (a consumer on
  the machine that produced a payload reads it without a download) up to
  ``spool_max_bytes``.

Either way, what task processes open is :attr:`StoreClient.local`: a plain
:class:`ObjectStore` (the store itself, or the spool), so they never speak
gRPC; the worker's loop moves objects in and out of the spool around them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.store.codec import Frame, chunk_frames, encode_frame
from fleetflow.store.objects import ObjectStore, StoreMarker, StoreSpec
from fleetflow.store.refs import StoredItem, StoredItems, StoredRef
from fleetflow.store.remote import TransferClient

__all__ = ["StoreClient", "DEFAULT_INLINE_MAX_BYTES"]

#: The default inline limit, bytes (the coordinator's ``inline_max_bytes``).
DEFAULT_INLINE_MAX_BYTES = 64 << 10


class StoreClient:
    """One process's way to the result store.

    Args:
        info: What the coordinator said (GetStoreInfo).
        transfer: TransferService calls on the coordinator's channel.
        url: Use this URL instead of ``info.url`` (the same store mounted at
            another path here); "" keeps the coordinator's.
        direct: Use the hosted store's folder directly when it is visible
            here (False forces the chunked gRPC path, e.g. in tests).
        spool_dir: Local folder for the spool ("": a temporary one).
        spool_max_bytes: Spool objects not in use are deleted, oldest first,
            once the spool holds more than this, bytes.

    Raises:
        ValueError: the coordinator has no result store, or its URL cannot be opened here.
    """

    def __init__(
        self,
        info: ts.StoreInfo,
        transfer: TransferClient | None,
        *,
        url: str = "",
        direct: bool = True,
        spool_dir: str = "",
        spool_max_bytes: int = 2 << 30,
    ) -> None:
        if not info.url and not url:
            raise ValueError("the coordinator has no result store")
        options = json.loads(info.options_json or "{}")
        self.info = info
        self.transfer = transfer
        self.inline_max_bytes = int(info.inline_max_bytes or DEFAULT_INLINE_MAX_BYTES)
        self.chunk_bytes = int(info.chunk_bytes or 1 << 20)
        self.spool_max_bytes = spool_max_bytes
        #: True when objects move through the spool and TransferService.
        self.remote = False
        if url:
            self.local = ObjectStore(url, options)
        elif not info.hosted:
            self.local = ObjectStore(info.url, options)
        elif direct and StoreMarker.visible(info.url.removeprefix("file://"), info.store_id):
            self.local = ObjectStore(info.url)
        else:
            if transfer is None:
                raise ValueError("the coordinator hosts the store on another machine: no channel")
            self.remote = True
            self._spool_tmp = None if spool_dir else tempfile.mkdtemp(prefix="fleetflow-spool-")
            self.local = ObjectStore(spool_dir or self._spool_tmp or "")
        #: {key: [size, last use (monotonic), pins]} of spool objects
        self._spooled: dict[str, list[Any]] = {}
        self._downloads: dict[str, asyncio.Future[None]] = {}

    @property
    def spec(self) -> StoreSpec:
        """What task processes open (:func:`open_spec`)."""
        return (self.local.url, dict(self.local.options))

    def where(self, key: str) -> str:
        """Where people find an object: its URL, or ``coordinator:KEY`` for a remote hosted one."""
        return f"coordinator:{key}" if self.remote else self.local.url_of(key)

    # ------------------------------------------------------------- writing

    async def put_value(self, key: str, value: Any) -> StoredRef:
        """Encode and store one value; returns its reference.

        Raises:
            TypeError: the value does not pickle.
            OSError, grpc.aio.AioRpcError: the store refused the write.
        """
        frame = await asyncio.to_thread(encode_frame, value)
        return (await self.put_frames(key, [frame]))[0]

    async def put_frames(self, key: str, frames: Sequence[Frame]) -> list[StoredRef]:
        """Store frames as one object (a pack); one reference each."""
        if self.remote and self.transfer is not None:
            return await self.transfer.upload_frames(key, frames)
        return await asyncio.to_thread(self.local.put_pack, key, frames)

    async def put_items(self, key_prefix: str, items: Sequence[Any]) -> StoredItems:
        """Store a list in chunks (``<key_prefix>.c<k>``); the coordinator learns only the table."""
        chunks: list[tuple[StoredRef, int]] = []
        frames = chunk_frames(items, self.chunk_bytes)
        k = 0
        while True:
            nxt = await asyncio.to_thread(next, frames, None)
            if nxt is None:
                break
            frame, count = nxt
            ref = (await self.put_frames(f"{key_prefix}.c{k}", [frame]))[0]
            chunks.append((ref, count))
            k += 1
        return StoredItems(chunks)

    async def publish(self, keys: Iterable[str]) -> None:
        """Upload objects a task process wrote into the spool (remote mode only).

        They stay in the spool (a consumer here reads them without a download)
        until the spool is over its size.
        """
        if not self.remote or self.transfer is None:
            return
        for key in dict.fromkeys(keys):
            await self.transfer.upload_file(key, self.local)
            size = self.local.size_of(key) or 0
            self._spooled[key] = [size, time.monotonic(), 0]
        self._evict()

    # ------------------------------------------------------------- reading

    async def fetch(self, refs: Iterable[StoredRef]) -> list[str]:
        """Make the objects of ``refs`` readable from :attr:`local`; pins them.

        Returns:
            The keys pinned: pass them to :meth:`release` once done.

        Raises:
            StoredObjectMissing: the coordinator has no such object.
        """
        if not self.remote or self.transfer is None:
            return []
        keys = list(dict.fromkeys(ref.key for ref in refs))
        sizes = {ref.key: ref.offset + ref.size for ref in refs}
        for key in keys:
            entry = self._spooled.get(key)
            if entry is None:
                pending = self._downloads.get(key)
                if pending is None:
                    pending = self._downloads[key] = asyncio.ensure_future(
                        self.transfer.download(key, self.local, sizes.get(key, 0))
                    )
                    pending.add_done_callback(lambda _, k=key: self._downloads.pop(k, None))
                await asyncio.shield(pending)
                entry = self._spooled.setdefault(key, [self.local.size_of(key) or 0, 0.0, 0])
            entry[1] = time.monotonic()
            entry[2] += 1
        self._evict()
        return keys

    def release(self, keys: Iterable[str]) -> None:
        """Unpin keys pinned by :meth:`fetch`."""
        for key in keys:
            entry = self._spooled.get(key)
            if entry is not None and entry[2] > 0:
                entry[2] -= 1
        self._evict()

    def _evict(self) -> None:
        total = sum(e[0] for e in self._spooled.values())
        if total <= self.spool_max_bytes:
            return
        for key, entry in sorted(self._spooled.items(), key=lambda kv: kv[1][1]):
            if total <= self.spool_max_bytes:
                break
            if entry[2] == 0:
                self.local.delete([key])
                del self._spooled[key]
                total -= entry[0]

    async def load(self, ref: StoredRef) -> Any:
        """Read, verify and rebuild one stored value (downloading it first if remote)."""
        keys = await self.fetch([ref])
        try:
            return await asyncio.to_thread(self.local.load, ref)
        finally:
            self.release(keys)

    async def load_item(self, item: StoredItem) -> Any:
        """One item of a stored list."""
        keys = await self.fetch([item.chunk])
        try:
            return await asyncio.to_thread(self.local.load_item, item)
        finally:
            self.release(keys)

    async def load_items(self, items: StoredItems) -> list[Any]:
        """A whole stored list, read chunk by chunk."""
        out: list[Any] = []
        for ref, _ in items.chunks:
            out.extend(await self.load(ref))
        return out

    def close(self) -> None:
        """Delete a temporary spool."""
        tmp = getattr(self, "_spool_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
            self._spool_tmp = None
