"""A flow run's event stream, resumed across lost connections: ``AsyncClient.watch``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from fleetflow._codec import new_events
from fleetflow._connection import Connection, client_log
from fleetflow._retry import RetryBudget
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.errors import CoordinatorUnreachable, RPCError, WatchInterrupted
from fleetflow.events import FlowEvent

__all__ = ["watch_batches"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def watch_batches(
    conn: Connection, flow_run_id: str, after_seq: int
) -> AsyncIterator[list[FlowEvent]]:
    """``AsyncClient.watch`` a batch at a time (what the blocking facade pulls per step).

    Raises:
        The errors of ``AsyncClient.watch``.
    """
    last_seq = after_seq
    budget = RetryBudget(conn.backoff, None, conn.rng)
    interrupted = False
    while True:
        request = pb.WatchFlowRunRequest(flow_run_id=flow_run_id, after_seq=last_seq)
        try:
            endpoint, call = await conn.open_stream("WatchFlowRun", request, budget)
        except CoordinatorUnreachable as exc:
            raise WatchInterrupted(flow_run_id, last_seq, exc.details) from exc
        failure: grpc.RpcError | None = None
        try:
            async for response in call:
                budget.reset()
                if interrupted:
                    interrupted = False
                    client_log().info("watch_resumed", flow_run_id=flow_run_id, after_seq=last_seq)
                batch = new_events(response, last_seq)
                for i, event in enumerate(batch):
                    if event.is_terminal:
                        del batch[i + 1 :]
                        break
                if batch:
                    last_seq = batch[-1].seq
                    yield batch
                    if batch[-1].is_terminal:
                        return
        except grpc.RpcError as exc:
            failure = exc
        finally:
            call.cancel()
        code = failure.code() if failure is not None else _UNAVAILABLE  # type: ignore[attr-defined]
        details = failure.details() if failure is not None else "the stream ended early"  # type: ignore[attr-defined]
        if code is _UNAVAILABLE:
            conn.lost(endpoint, details or "")
            if not interrupted:
                interrupted = True
                client_log().warning(
                    "watch_interrupted",
                    flow_run_id=flow_run_id,
                    last_seq=last_seq,
                    address=endpoint.label,
                    details=details,
                )
        delay = budget.delay_s(code)
        if delay is None:
            if failure is None:
                raise _stream_ended(flow_run_id, last_seq)
            error = budget.error(failure, flow_run_id)
            if code is _UNAVAILABLE and isinstance(error, RPCError):
                raise WatchInterrupted(flow_run_id, last_seq, error.details) from failure
            raise error from failure
        await conn.sleep(delay)


def _stream_ended(flow_run_id: str, last_seq: int) -> WatchInterrupted:
    return WatchInterrupted(
        flow_run_id, last_seq, "the event stream kept ending before the flow run's last event"
    )
