"""The coordinator's side of the result store: where it is, what a flow run keeps there, cleanup.

The coordinator never reads a stored payload: producers write them and
consumers read them (see docs/architecture.md, "Where bytes live"). It only

* tells workers and clients where the store is (:meth:`ResultStore.info`);
* hosts the store on its own disk when none is configured, serving uploads
  and downloads in chunks (:mod:`fleetflow_coordinator.transfer`);
* deletes a flow run's objects when the flow run is pruned, and collects
  objects that a crash left behind (:meth:`ResultStore.collect_orphans`);
* adds up what a flow run keeps there (:func:`stored_usage`).

Everything here reads the core's records and never changes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import structlog
from fleetflow.api.v1 import common_pb2, transfer_service_pb2
from fleetflow.store import ObjectStore, StoredItem, StoredItems, StoredRef, StoreMarker
from fleetflow.store.refs import ref_from_proto

from fleetflow_coordinator.core.model import FlowRun

__all__ = ["ResultStore", "stored_usage", "flow_refs", "TRANSFER_CHUNK_BYTES"]

log = structlog.get_logger(__name__)

#: Largest ``data`` of one WriteObject/ReadObject message, bytes.
TRANSFER_CHUNK_BYTES = 1 << 20


def is_database_url(db: str) -> bool:
    """Whether the ``db`` setting names a database server (``postgresql://...``), not a file."""
    return db.startswith(("postgresql://", "postgres://"))


def hosted_root(db: str) -> str | None:
    """Folder of the coordinator-hosted result store for the ``db`` setting.

    ``results/`` next to a SQLite file; ``.fleetflow/results`` in the working
    directory when the state is in a database server (its URL is no path); None
    for ``:memory:`` (a throwaway folder, removed at stop).
    """
    if db == ":memory:":
        return None
    if is_database_url(db):
        return os.path.abspath(os.path.join(".fleetflow", "results"))
    return os.path.join(os.path.dirname(os.path.abspath(db)), "results")


class ResultStore:
    """Where payloads above the inline limit go, as this coordinator serves it.

    Args:
        objects: The store's objects.
        hosted: The coordinator hosts it on its own disk (and streams it).
        store_id: The hosted store's identity (see ``StoreMarker``).
        inline_max_bytes: Payloads whose pickle is larger go to the store, bytes.
        chunk_bytes: Target size of one chunk of a stored list, bytes.
        min_free_bytes: A hosted upload that would leave less free disk is refused.
        orphan_grace_s: Objects no flow run refers to are deleted once they
            are this old (seconds): a submission may still be uploading.
        temporary: A folder to delete when the coordinator stops (``--db :memory:``).
    """

    def __init__(
        self,
        objects: ObjectStore,
        *,
        hosted: bool,
        store_id: str = "",
        inline_max_bytes: int = 64 << 10,
        chunk_bytes: int = 1 << 20,
        min_free_bytes: int = 1 << 30,
        orphan_grace_s: float = 3600.0,
        temporary: str | None = None,
    ) -> None:
        self.objects = objects
        self.hosted = hosted
        self.store_id = store_id
        self.inline_max_bytes = inline_max_bytes
        self.chunk_bytes = chunk_bytes
        self.min_free_bytes = min_free_bytes
        self.orphan_grace_s = orphan_grace_s
        self._temporary = temporary

    @classmethod
    def from_settings(cls, settings: Any) -> ResultStore:
        """Open the store the settings name (``result_store``; default: hosted next to the db).

        Raises:
            ValueError: the URL or its options are invalid (the message names the setting).
            OSError: the hosted folder cannot be created.
        """
        try:
            options = json.loads(settings.result_store_options or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"result_store_options: not JSON ({exc})") from None
        if not isinstance(options, dict):
            raise ValueError("result_store_options: must be a JSON object")
        common = {
            "inline_max_bytes": settings.inline_max_bytes,
            "chunk_bytes": settings.result_chunk_bytes,
            "min_free_bytes": settings.store_min_free_bytes,
            "orphan_grace_s": settings.orphan_grace_s,
        }
        if settings.result_store:
            try:
                objects = ObjectStore(settings.result_store, options)
            except ValueError as exc:
                raise ValueError(f"result_store: {exc}") from None
            return cls(objects, hosted=False, **common)
        temporary = None
        root = hosted_root(settings.db)
        if root is None:
            root = temporary = tempfile.mkdtemp(prefix="fleetflow-results-")
        elif is_database_url(settings.db):
            # A standby that takes over cannot read this coordinator's disk.
            log.warning(
                "result_store_not_shared",
                root=root,
                advice="with several coordinators on PostgreSQL, set result_store "
                "(--result-store s3://... or a shared path): objects hosted here are "
                "unreachable after a standby takes over",
            )
        marker = StoreMarker.ensure(root)
        _tighten(root)
        return cls(
            ObjectStore(root), hosted=True, store_id=marker.store_id, temporary=temporary, **common
        )

    def close(self) -> None:
        """Remove a throwaway store's folder (the coordinator runs with ``--db :memory:``)."""
        if self._temporary:
            shutil.rmtree(self._temporary, ignore_errors=True)

    def info(self) -> transfer_service_pb2.StoreInfo:
        """What GetStoreInfo answers."""
        return transfer_service_pb2.StoreInfo(
            url=self.objects.url,
            options_json=json.dumps(self.objects.options),
            hosted=self.hosted,
            store_id=self.store_id,
            inline_max_bytes=self.inline_max_bytes,
            chunk_bytes=self.chunk_bytes,
            transfer_chunk_bytes=TRANSFER_CHUNK_BYTES,
        )

    def free_bytes(self) -> int:
        """Free disk under a hosted store, bytes (a very large number for other stores)."""
        if not self.hosted:
            return 1 << 62
        return shutil.disk_usage(self.objects.root).free

    # ------------------------------------------------------------ deletion

    async def delete_flow_runs(self, flows: Iterable[tuple[str, str]]) -> None:
        """Delete the objects of pruned flow runs: ``[(flow_run_id, idempotency_key)]``.

        Failures are logged, not raised: the orphan collection retries them.
        """
        for flow_run_id, key in flows:
            prefixes = [f"runs/{flow_run_id}"]
            if key:
                prefixes.append(f"submit/{_safe(key)}")
            for prefix in prefixes:
                try:
                    await asyncio.to_thread(self.objects.delete_prefix, prefix)
                except Exception as exc:  # noqa: BLE001 - a store outage must not stop pruning
                    log.warning("stored_objects_not_deleted", prefix=prefix, error=str(exc))

    async def collect_orphans(self, flows: dict[str, FlowRun], now: float | None = None) -> int:
        """Delete objects older than the grace period that no flow run refers to.

        Covers what a crash leaves: uploads of a submission that never
        happened, payloads of attempts whose outcome never counted (lost,
        fenced, or written just before a crash), objects of flow runs pruned
        while the store was unreachable, unfinished local writes.

        Args:
            flows: The coordinator's flow runs by id (read between awaits,
                never changed).
            now: Seconds since the epoch; the wall clock when omitted.

        Returns:
            How many objects were deleted.
        """
        now = time.time() if now is None else now
        cutoff = now - self.orphan_grace_s
        objects = self.objects
        deleted = 0
        keys_in_use = {f.idempotency_key for f in flows.values() if f.idempotency_key}
        for top, known in (("runs", set(flows)), ("submit", {_safe(k) for k in keys_in_use})):
            names = await asyncio.to_thread(objects.top_level, top)
            for name in names:
                prefix = f"{top}/{name}"
                listed = await asyncio.to_thread(objects.list, prefix)
                if name not in known:
                    stale = [o.key for o in listed if o.mtime < cutoff]
                    if stale and len(stale) == len(listed):
                        await asyncio.to_thread(objects.delete_prefix, prefix)
                    elif stale:
                        await asyncio.to_thread(objects.delete, stale)
                    deleted += len(stale)
                    continue
                if top != "runs":
                    continue
                flow = flows.get(name)
                if flow is None or not flow.terminal:
                    continue  # attempts may still write
                used = {ref.key for ref in flow_refs(flow)}
                stale = [o.key for o in listed if o.key not in used and o.mtime < cutoff]
                if stale:
                    await asyncio.to_thread(objects.delete, stale)
                    deleted += len(stale)
                await asyncio.sleep(0)
        if deleted:
            log.info("orphaned_objects_deleted", count=deleted, grace_s=self.orphan_grace_s)
        return deleted


def _safe(key: str) -> str:
    """The folder name a client uses for a submission's uploads (see fleetflow.store)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)[:200] or "_"


def _value_refs(value: Any) -> Iterable[StoredRef]:
    if isinstance(value, StoredRef):
        yield value
    elif isinstance(value, StoredItem):
        yield value.chunk
    elif isinstance(value, StoredItems):
        for ref, _ in value.chunks:
            yield ref


def flow_refs(flow: FlowRun) -> Iterable[StoredRef]:
    """Every stored payload a flow run refers to: results, split items, arguments, parameters."""
    for node in flow.nodes:
        for arg in node.args:
            payload = arg.payload
            if isinstance(payload, StoredRef | StoredItems):
                yield from _value_refs(payload)
        for tr in node.children:
            if tr.result is not None and not isinstance(tr.result, bytes):
                yield from _value_refs(tr.result)
            if tr.items is not None and not isinstance(tr.items, list):
                yield from _value_refs(tr.items)
    yield from _value_refs(getattr(flow, "output_literal", None))
    yield from spec_parameter_refs(flow.spec_blob)


def spec_parameter_refs(spec_blob: bytes) -> list[StoredRef]:
    """The stored parameters of a submitted spec (they are only in the spec)."""
    if not spec_blob or b"submit/" not in spec_blob:
        return []
    spec = common_pb2.FlowSpec.FromString(spec_blob)
    out = []
    for ref in spec.stored_parameters.values():
        try:
            out.append(ref_from_proto(ref))
        except ValueError:
            continue
    return out


def stored_usage(flow: FlowRun) -> tuple[int, int, int]:
    """``(bytes, distinct objects, largest payload)`` a flow run keeps in the store.

    Walks the flow run's task runs: O(task runs), for ``inspect``, not for hot paths.
    """
    total = 0
    largest = 0
    keys = set()
    seen: set[StoredRef] = set()
    for ref in flow_refs(flow):
        if ref in seen:
            continue
        seen.add(ref)
        total += ref.size
        largest = max(largest, ref.size)
        keys.add(ref.key)
    return total, len(keys), largest


def _tighten(root: str) -> None:
    """Make the hosted store's folder 0700 if others may enter it (an older one); log it.

    Objects are created 0600 in folders made 0700, but a folder made by an
    older version may be open to others: closing its root closes everything
    under it.
    """
    mode = os.stat(root).st_mode & 0o777
    if mode & 0o077:
        os.chmod(root, mode & 0o700)
        log.warning("result_store_mode_tightened", root=root, was=oct(mode), now=oct(mode & 0o700))
