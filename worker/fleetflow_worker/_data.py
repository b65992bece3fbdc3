"""The worker's side of the result store: inputs in before an attempt, results out after.

Task processes read and write the store themselves (a plain folder or
bucket, :class:`~fleetflow_worker._codec.StoreContext`); what needs the
coordinator happens here, on the worker's loop:

* **before** an attempt: a fan-in too large for the lease (``NodeValues``)
  is paged in with ``ReadNodeValues``; when the coordinator hosts the store
  on another machine, every stored input is downloaded into the local spool
  (pinned until the attempt ends);
* **after** it: in that same case, what the attempt wrote into the spool is
  uploaded before its outcome is reported, so the coordinator never holds a
  reference to bytes that are not there.

A failure to get an input (missing, damaged) fails the attempt as an
*infrastructure* failure naming the object. A coordinator that is out of reach
(restarting, failing over, partitioned: ``UNAVAILABLE`` or
``DEADLINE_EXCEEDED``) is waited for instead, up to
:data:`UNREACHABLE_PATIENCE_S`, both ways: a restart must not throw away a
finished attempt's result, nor charge its task run an infrastructure failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from fleetflow.api.v1 import worker_service_pb2
from fleetflow.errors import StoredObjectError
from fleetflow.store import StoredItems, StoredRef
from fleetflow.store.access import StoreClient
from fleetflow.store.refs import items_from_proto, ref_from_proto
from fleetflow.store.remote import TransferClient

from fleetflow_worker._codec import NodeValues, StoreContext, WireArg, stored_refs
from fleetflow_worker.backoff import Backoff

__all__ = ["UNREACHABLE_PATIENCE_S", "DataPlane", "InputUnavailable"]

log = structlog.get_logger()

_T = TypeVar("_T")

#: gRPC codes meaning the coordinator is out of reach for now (a restart, a
#: failover, a partition, a frozen process), not that it refused the request.
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

#: How long a transfer waits for an unreachable coordinator, seconds. The
#: attempt stays held (listed in heartbeats) meanwhile, so a coordinator that
#: comes back re-attaches it and takes its outcome; the bound only keeps a
#: transfer that can never succeed from waiting forever.
UNREACHABLE_PATIENCE_S = 600.0


async def _patiently(what: str, call: Callable[[], Awaitable[_T]], patience_s: float) -> _T:
    """Await ``call()``, calling again while the coordinator is unreachable.

    Retries with capped exponential backoff and jitter for up to
    ``patience_s`` seconds; any other error, or one past that, propagates.
    """
    backoff = Backoff(cap_s=2.0, base_s=0.1)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _UNREACHABLE or time.monotonic() >= deadline:
                raise
            delay = backoff.failed()
            if backoff.failures == 1:
                log.warning(
                    "store_transfer_waiting",
                    transfer=what,
                    code=exc.code().name,
                    details=exc.details(),
                )
            await asyncio.sleep(delay)
            continue
        if backoff.failures:
            log.info("store_transfer_recovered", transfer=what, failed_calls=backoff.failures)
        return result


class InputUnavailable(Exception):  # noqa: N818 - named for what happened
    """An attempt's input could not be made readable; the attempt fails as infrastructure."""


class DataPlane:
    """The result store as this worker reaches it (set up after each registration).

    Args:
        url: Use this URL instead of the coordinator's (the same store
            mounted at another path here); "" keeps the coordinator's.
        direct: Use the coordinator-hosted folder directly when it is visible here.
        spool_dir: Local folder for the spool ("": a temporary one).
        spool_max_bytes: Spool size above which unused objects are deleted, bytes.
    """

    def __init__(
        self,
        *,
        url: str = "",
        direct: bool = True,
        spool_dir: str = "",
        spool_max_bytes: int = 2 << 30,
    ) -> None:
        self._url = url
        self._direct = direct
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self.client: StoreClient | None = None
        self._transfer: TransferClient | None = None
        #: Uploads in flight (outcomes waiting for their payload to reach the coordinator).
        self._uploads: set[asyncio.Future[None]] = set()
        #: How long a transfer waits for an unreachable coordinator, seconds.
        self.unreachable_patience_s = UNREACHABLE_PATIENCE_S

    async def connect(self, channel: grpc.aio.Channel | None) -> None:
        """Ask the coordinator where the store is; keep the old way if it did not change.

        A coordinator without a result store (or without TransferService)
        leaves the worker inline-only, as before.
        """
        if channel is None:
            return
        transfer = TransferClient(channel)
        try:
            info = await transfer.store_info()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return
            raise
        if not info.url:
            return
        self._transfer = transfer
        if self.client is not None and self.client.info == info:
            self.client.transfer = transfer  # the same store, maybe through another coordinator
            return
        if self.client is not None:
            self.client.close()
        self.client = StoreClient(
            info,
            transfer,
            url=self._url,
            direct=self._direct,
            spool_dir=self._spool_dir,
            spool_max_bytes=self._spool_max_bytes,
        )
        log.info(
            "result_store",
            url=self.client.local.url,
            through_coordinator=self.client.remote,
            inline_max_bytes=self.client.inline_max_bytes,
        )

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` seconds) for results still uploading."""
        if self._uploads:
            await asyncio.wait(set(self._uploads), timeout=timeout_s)

    def close(self) -> None:
        """Delete a temporary spool."""
        if self.client is not None:
            self.client.close()

    def context(self, lease: worker_service_pb2.Lease) -> StoreContext | None:
        """What the attempt's process needs from the store (None: no store)."""
        client = self.client
        if client is None:
            return None
        limit = lease.inline_max_bytes or client.inline_max_bytes
        return StoreContext(
            client.spec,
            int(limit),
            client.chunk_bytes,
            lease.flow_run_id,
            lease.task_run_id,
            lease.attempt,
        )

    async def prepare(self, args: Sequence[WireArg]) -> tuple[list[WireArg], list[str]]:
        """Make an attempt's arguments readable by its process.

        Returns:
            ``(args, pinned keys)``: the arguments with fan-ins paged in, and
            the spool objects to :meth:`release` once the attempt ended.

        Raises:
            InputUnavailable: an input is missing, damaged or cannot be fetched;
                the message names it.
        """
        out: list[WireArg] = []
        for name, value in args:
            if isinstance(value, NodeValues):
                value = await self._page_in(name, value)
            out.append((name, value))
        client = self.client
        refs = stored_refs(out)
        if not refs:
            return out, []
        if client is None:
            raise InputUnavailable(
                "an argument is in the result store, but the coordinator named none"
            )
        try:
            return out, await _patiently(
                "download", lambda: client.fetch(refs), self.unreachable_patience_s
            )
        except StoredObjectError as exc:
            raise InputUnavailable(str(exc)) from None
        except (grpc.aio.AioRpcError, OSError) as exc:
            raise InputUnavailable(
                f"could not fetch an input from the result store: {exc}"
            ) from None

    async def _page_in(self, name: str, value: NodeValues) -> list[bytes | StoredRef]:
        if self._transfer is None:
            raise InputUnavailable(f"argument {name!r} must be paged in, but no store is set")
        try:
            # self._transfer is read at each try: a failover or a new
            # registration may have moved the worker to another channel.
            return await _patiently(
                "read_node_values",
                lambda: self._transfer.node_values(value.flow_run_id, value.node, value.count),
                self.unreachable_patience_s,
            )
        except (grpc.aio.AioRpcError, ValueError) as exc:
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            raise InputUnavailable(
                f"argument {name!r}: the results of node {value.node} of flow run "
                f"{value.flow_run_id} could not be read: {details}"
            ) from None

    def release(self, keys: Sequence[str]) -> None:
        """Unpin what :meth:`prepare` pinned."""
        if keys and self.client is not None:
            self.client.release(keys)

    def needs_publish(self, outcome: worker_service_pb2.Outcome) -> bool:
        """Whether the outcome refers to objects still only in the local spool."""
        return (
            self.client is not None
            and self.client.remote
            and outcome.WhichOneof("result") in ("ref", "stored_items")
        )

    async def publish(self, outcome: worker_service_pb2.Outcome) -> None:
        """Upload what the outcome refers to from the spool to the coordinator.

        Raises:
            grpc.aio.AioRpcError, OSError, StoredObjectError: the upload failed.
        """
        assert self.client is not None
        which = outcome.WhichOneof("result")
        keys: list[str] = []
        if which == "ref":
            keys.append(ref_from_proto(outcome.ref).key)
        elif which == "stored_items":
            items: StoredItems = items_from_proto(outcome.stored_items)
            keys.extend(ref.key for ref, _ in items.chunks)
        await self.client.publish(keys)

    def deliver(
        self, put: Callable[[worker_service_pb2.Outcome], None], encode_error: Callable[..., Any]
    ) -> Callable[[worker_service_pb2.Outcome], None]:
        """Wrap the reporter's ``put``: outcomes whose payload is in the spool are uploaded first.

        An upload that fails three times (e.g. the coordinator's disk is
        full) turns the outcome into an infrastructure failure that says why;
        an unreachable coordinator is waited for first (see :func:`_patiently`),
        so a restart during the upload neither loses the result nor counts.
        """

        def on_outcome(outcome: worker_service_pb2.Outcome) -> None:
            if not self.needs_publish(outcome):
                put(outcome)
                return
            task = asyncio.ensure_future(self._publish_then_put(outcome, put, encode_error))
            self._uploads.add(task)
            task.add_done_callback(self._uploads.discard)

        return on_outcome

    async def _publish_then_put(
        self,
        outcome: worker_service_pb2.Outcome,
        put: Callable[[worker_service_pb2.Outcome], None],
        encode_error: Callable[..., Any],
    ) -> None:
        from fleetflow_worker._codec import to_outcome

        error: Exception | None = None
        for attempt in range(3):
            try:
                await _patiently(
                    "upload", lambda: self.publish(outcome), self.unreachable_patience_s
                )
                put(outcome)
                return
            except (grpc.aio.AioRpcError, OSError, StoredObjectError) as exc:
                error = exc
                log.warning(
                    "result_upload_failed",
                    task_run_id=outcome.task_run_id,
                    attempt=outcome.attempt,
                    error=str(exc),
                )
                await asyncio.sleep(0.5 * 2**attempt)
        failed = RuntimeError(f"the result could not be uploaded to the coordinator: {error}")
        replacement = to_outcome(
            outcome.task_run_id,
            outcome.attempt,
            encode_error(failed, infrastructure=True),
            infrastructure=True,
            cpu_seconds=outcome.cpu_seconds,
            peak_memory_bytes=outcome.peak_memory_bytes,
            duration_seconds=outcome.duration_seconds,
        )
        replacement.gpu_devices.extend(outcome.gpu_devices)
        replacement.peak_gpu_memory_bytes = outcome.peak_gpu_memory_bytes
        if outcome.HasField("gpu_utilization_percent"):
            replacement.gpu_utilization_percent = outcome.gpu_utilization_percent
        put(replacement)
