"""Report attempt outcomes to the coordinator in batches, never dropping one.

One :class:`OutcomeReporter` task drains a FIFO queue: it sends everything
queued (up to ``batch_size`` outcomes and about ``batch_bytes``) in one
ReportOutcomes call and removes exactly the outcomes the coordinator
acknowledged (accepted, stale or unknown: each means "received"). On an RPC
error the batch stays queued and is resent after a backoff.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog
from fleetflow.api.v1 import worker_service_pb2
from fleetflow.serde import error_from_exception

from fleetflow_worker.backoff import Backoff
from fleetflow_worker.errors import OutcomeTooLarge
from fleetflow_worker.state import AttemptKey

__all__ = ["OutcomeReporter", "SendOutcomes"]

log = structlog.get_logger()

#: Sends one batch and returns the coordinator's acks (one per outcome, in order).
SendOutcomes = Callable[[Sequence[worker_service_pb2.Outcome]], Awaitable[Sequence[int]]]


class OutcomeReporter:
    """A FIFO of outcomes and the loop that reports them.

    Args:
        send: Performs the ReportOutcomes RPC.
        on_acknowledged: Called with each acknowledged attempt.
        batch_size: Most outcomes per call.
        batch_bytes: Soft limit of one call's size, bytes (one outcome is
            always sent, whatever its size).
        backoff: Delays between failed calls.
    """

    def __init__(
        self,
        send: SendOutcomes,
        on_acknowledged: Callable[[AttemptKey], None],
        *,
        batch_size: int = 2000,
        batch_bytes: int = 3 * 1024 * 1024,
        backoff: Backoff | None = None,
    ) -> None:
        self._send = send
        self._on_acknowledged = on_acknowledged
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self._backoff = backoff or Backoff()
        #: Outcomes not yet acknowledged, oldest first; only the loop pops.
        self._queue: collections.deque[worker_service_pb2.Outcome] = collections.deque()
        self._queued = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        #: Most outcomes per call right now; halved when the coordinator
        #: refuses a call as too large, grown back after successes.
        self._limit = batch_size

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def asks_next(self) -> bool:
        """Whether a ReportOutcomes call is due now (outcomes queued, no backoff).

        Each call also asks for new leases, so the lease loop leaves freed
        slots to it rather than asking for them in a LeaseTasks of its own.
        """
        return bool(self._queue) and self._backoff.failures == 0

    def put(self, outcome: worker_service_pb2.Outcome) -> None:
        """Queue one outcome for reporting."""
        self._queue.append(outcome)
        self._empty.clear()
        self._queued.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued outcome is acknowledged; returns False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            if not self._queue:
                self._empty.set()
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = self._next_batch()
            try:
                acks = await self._send(batch)
            except Exception as exc:  # noqa: BLE001 - keep every outcome, retry later
                await self._failed(batch, exc)
                continue
            failures = self._backoff.succeeded()
            if failures:
                log.info("report_outcomes_recovered", failed_calls=failures)
            self._limit = min(self.batch_size, self._limit * 2)
            self._acknowledge(batch, acks)

    def _next_batch(self) -> list[worker_service_pb2.Outcome]:
        batch: list[worker_service_pb2.Outcome] = []
        size = 0
        for outcome in self._queue:
            if len(batch) >= self._limit:
                break
            size += outcome.ByteSize() + 8
            if batch and size > self.batch_bytes:
                break
            batch.append(outcome)
        return batch

    def _acknowledge(self, batch: list[worker_service_pb2.Outcome], acks: Sequence[int]) -> None:
        if len(acks) != len(batch):
            log.warning("report_outcomes_ack_mismatch", sent=len(batch), acks=len(acks))
        for outcome, ack in zip(batch, acks, strict=False):
            if ack == worker_service_pb2.OUTCOME_ACK_UNSPECIFIED:
                log.warning("report_outcomes_ack_unspecified", task_run_id=outcome.task_run_id)
            popped = self._queue.popleft()
            assert popped is outcome, "the report queue changed under the reporter"
            self._on_acknowledged(AttemptKey(outcome.task_run_id, outcome.attempt))

    async def _failed(self, batch: list[worker_service_pb2.Outcome], exc: Exception) -> None:
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if len(batch) > 1:
                self._limit = max(1, len(batch) // 2)
                log.info("report_outcomes_split", outcomes=len(batch), next_limit=self._limit)
                return
            self._replace_oversized(batch[0], exc.details() or "")  # type: ignore[union-attr]
            return
        delay = self._backoff.failed()
        if self._backoff.failures == 1 or self._backoff.failures % 20 == 0:
            log.warning(
                "report_outcomes_failed",
                code=code.name if code is not None else type(exc).__name__,
                details=exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc),
                queued=len(self._queue),
                failures=self._backoff.failures,
                retry_in_s=round(delay, 3),
            )
        await asyncio.sleep(delay)

    def _replace_oversized(self, outcome: worker_service_pb2.Outcome, details: str) -> None:
        """An outcome the coordinator can never accept becomes a failure that fits."""
        failure = worker_service_pb2.Outcome(
            task_run_id=outcome.task_run_id,
            attempt=outcome.attempt,
            error=error_from_exception(OutcomeTooLarge(outcome.ByteSize(), details)),
        )
        log.warning(
            "outcome_too_large",
            task_run_id=outcome.task_run_id,
            attempt=outcome.attempt,
            size=outcome.ByteSize(),
        )
        self._queue[0] = failure
