"""``run()``: submit a flow run and wait for its result in one call to the coordinator.

The SubmitFlowRun request carries ``wait_seconds`` and ``include_result``, so
the coordinator answers once the flow run has ended, with what GetFlowRun's
long poll would answer: a one-task flow costs one client round trip instead of
two (issue 18). A flow run still going when that wait ends (at most
``LONG_POLL_S``, as one long poll) is waited on with GetFlowRun, exactly as
``result()`` waits; so is one submitted to a coordinator that predates the
field (its answer has no ``flow_run``).

Retries: SubmitFlowRun is retried on ``UNAVAILABLE`` like every call, with the
same idempotency key, so a submission whose answer was lost (a restart, a
failover to another coordinator) returns the same flow run and waits for it;
it never starts a second one.

Interrupts: the flow run belongs to the ``run()`` call that started it, so an
interrupted call (Ctrl-C, the awaiting task cancelled) cancels it, as
``fleetflow run`` does, before the interrupt goes on; a note on the interrupt
says what happened. An interrupt that came before the submission's answer
finds the flow run by its idempotency key (the same submission again, without
a wait). A flow run that a caller's own idempotency key matched, and that this
call did not create, goes on; so that the answer says which it was, a call
with the caller's key submits without a wait and then waits with GetFlowRun
(one round trip more; an interrupt inside that first round trip leaves the
flow run going).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fleetflow._codec import LONG_POLL_GRACE_S, poll_done, poll_wait_s
from fleetflow._retry import deadline_after
from fleetflow.api.v1 import coordinator_service_pb2 as pb

if TYPE_CHECKING:
    from fleetflow._async_client import AsyncClient

__all__ = ["CANCEL_BOUND_S", "run_flow"]

#: Longest the clean-up after an interrupt may take (finding and cancelling
#: the flow run), seconds.
CANCEL_BOUND_S = 5.0


async def run_flow(
    client: AsyncClient,
    request: pb.SubmitFlowRunRequest,
    deadline: float | None,
    *,
    own_key: bool,
) -> Any:
    """Submit ``request``, wait until its flow run ends, and return its result.

    Args:
        client: The client whose connection carries the calls.
        request: The submission (its idempotency key set).
        deadline: The caller's deadline on the ``time.monotonic`` clock, or None.
        own_key: Whether the idempotency key was made for this call (then any
            flow run with it is this call's, and an interrupt cancels it).

    Returns:
        The flow's return value, as ``result()`` returns it.

    Raises:
        The errors of ``AsyncClient.run``.
    """
    conn = client._conn
    wait_s = poll_wait_s(deadline)
    # A caller's key may match a flow run this call did not create: learn which
    # from an answer at once (then wait as result() does), so that an interrupt
    # cancels only a flow run this call started. A key made here needs no such
    # answer: the one call submits and waits.
    request.wait_seconds = wait_s if own_key else 0.0
    request.include_result = own_key
    submitted: pb.SubmitFlowRunResponse | None = None
    try:
        started = time.monotonic()
        submitted = await conn.unary(
            "SubmitFlowRun", request, deadline=deadline, timeout_s=wait_s + LONG_POLL_GRACE_S
        )
        flow_run_id = submitted.flow_run_id
        answer = submitted.flow_run if own_key and submitted.HasField("flow_run") else None
        pause = (
            0.0
            if answer is None
            else poll_done(answer, flow_run_id, deadline, time.monotonic() - started)
        )
        if pause is not None:  # still running (or an older coordinator): wait as result() does
            if pause > 0:
                await conn.sleep(pause)
            answer = await client._poll_until_ended(flow_run_id, deadline, include_result=True)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C, a cancelled task, an exit
            await _abandon(client, request, submitted, own_key, exc)
        raise
    return await client._outcome(flow_run_id, answer, fetch=True)


async def _abandon(
    client: AsyncClient,
    request: pb.SubmitFlowRunRequest,
    submitted: pb.SubmitFlowRunResponse | None,
    own_key: bool,
    interrupt: BaseException,
) -> None:
    """Cancel the flow run an interrupted ``run()`` started (bounded); note it on ``interrupt``."""
    conn = client._conn
    deadline = deadline_after(CANCEL_BOUND_S)
    flow_run_id = submitted.flow_run_id if submitted is not None else "(not known)"
    try:
        if submitted is None:  # interrupted before the answer: find the flow run by its key
            request.wait_seconds = 0.0
            submitted = await conn.unary("SubmitFlowRun", request, deadline=deadline)
            flow_run_id = submitted.flow_run_id
        if not (own_key or submitted.created):
            interrupt.add_note(
                f"run(): flow run {flow_run_id} was not started by this call "
                f"(idempotency key {request.idempotency_key!r}) and goes on"
            )
            return
        await conn.unary(
            "CancelFlowRun",
            pb.CancelFlowRunRequest(flow_run_id=flow_run_id),
            flow_run_id=flow_run_id,
            deadline=deadline,
        )
    except Exception as exc:  # noqa: BLE001 - the interrupt goes on; say what failed
        interrupt.add_note(
            f"run(): cancelling flow run {flow_run_id} failed ({type(exc).__name__}: {exc}); "
            "it may go on"
        )
        return
    interrupt.add_note(f"run(): cancelled flow run {flow_run_id}, which this call started")
