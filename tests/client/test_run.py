"""``run()``: submit and wait in one call, against the fake CoordinatorService (issue 18)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest
from fleetflow import AsyncClient, FlowRunCancelled, FlowRunTimeout
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.serde import dumps, error_from_exception

from .fake_coordinator import FAST, CustomError, incs

State = common_pb2.FlowRunState


def _cancels(fake) -> list[str]:
    return [r.flow_run_id for r in fake.requests if isinstance(r, pb.CancelFlowRunRequest)]


def test_run_takes_the_result_from_the_submissions_answer(client, fake):
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    fake.result = common_pb2.Value(pickled=dumps({"a": 1}))
    assert client.run(incs, n=1) == {"a": 1}
    assert fake.gets == []  # one call: no GetFlowRun
    (request,) = fake.submits
    assert request.wait_seconds == 30.0 and request.include_result
    assert request.idempotency_key  # a key is always sent


def test_run_raises_the_task_failure_as_result_does(client, fake):
    fake.state = State.FLOW_RUN_STATE_FAILED
    try:
        raise CustomError("boom")
    except CustomError as exc:
        fake.error = error_from_exception(exc)
    with pytest.raises(CustomError, match="boom") as info:
        client.run(incs, n=1)
    notes = "\n".join(info.value.__notes__)
    assert "Remote traceback" in notes and "'inc'" in notes and "fr-1" in notes
    fake.state = State.FLOW_RUN_STATE_CANCELLED
    with pytest.raises(FlowRunCancelled):
        client.run(incs, n=1)


def test_run_goes_on_with_get_flow_run_when_the_answer_has_no_end(client, fake):
    """A coordinator without the one-call wait: the client polls as result() does."""
    fake.submit_waits = False
    fake.finish_after_gets = 2
    fake.result = common_pb2.Value(pickled=dumps(7))
    assert client.run(incs, n=1, timeout=30) == 7
    assert len(fake.submits) == 1 and len(fake.gets) == 2
    assert all(g.include_result and g.flow_run_id == "fr-1" for g in fake.gets)


def test_run_times_out_naming_the_flow_run_and_leaves_it_running(client, fake):
    started = time.monotonic()
    with pytest.raises(FlowRunTimeout) as info:
        client.run(incs, n=1, timeout=0.3)
    assert time.monotonic() - started < 3.0
    assert isinstance(info.value, TimeoutError) and info.value.flow_run_id == "fr-1"
    assert 0 < fake.submits[0].wait_seconds <= 0.3
    assert _cancels(fake) == []  # a timeout is not an interrupt: the flow run goes on


def test_run_retried_after_a_lost_answer_sends_the_same_key(client, fake):
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    fake.result = common_pb2.Value(pickled=dumps(3))
    fake.lose_submit_answers = 2
    assert client.run(incs, n=1) == 3
    keys = {r.idempotency_key for r in fake.submits}
    assert len(fake.submits) == 3 and len(keys) == 1  # same key: one flow run
    assert client.run(incs, n=1, idempotency_key="mine") == 3
    assert fake.submits[-1].idempotency_key == "mine"


def test_ctrl_c_during_a_blocking_run_cancels_the_flow_run_it_started(client, fake):
    assert threading.current_thread() is threading.main_thread()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)  # while the long poll waits
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            client.run(incs, n=1, timeout=20)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _cancels(fake) == ["fr-1"]
    assert any("cancelled flow run fr-1" in note for note in info.value.__notes__)


async def test_a_cancelled_async_run_cancels_the_flow_run_it_started(fake):
    async with AsyncClient(fake.address, backoff=FAST) as client:
        call = asyncio.create_task(client.run(incs, n=1))
        await asyncio.sleep(0.05)  # inside SubmitFlowRun's wait: no answer yet
        call.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await call
    # Found by its key (the same submission without a wait), then cancelled.
    assert [r.wait_seconds for r in fake.submits] == [30.0, 0.0]
    assert fake.submits[0].idempotency_key == fake.submits[1].idempotency_key
    assert _cancels(fake) == ["fr-1"]
    assert any("cancelled flow run fr-1" in note for note in info.value.__notes__)


async def test_an_interrupt_leaves_a_flow_run_this_call_did_not_create(fake):
    fake.matched = True  # the caller's key matched someone else's flow run
    async with AsyncClient(fake.address, backoff=FAST) as client:
        call = asyncio.create_task(client.run(incs, n=1, idempotency_key="shared"))
        await asyncio.sleep(0.35)  # past the first answer (RUNNING), while GetFlowRun waits
        call.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await call
    assert _cancels(fake) == []
    assert any("goes on" in note for note in info.value.__notes__)


async def test_an_interrupt_cancels_a_flow_run_this_call_created_under_the_callers_key(fake):
    async with AsyncClient(fake.address, backoff=FAST) as client:
        call = asyncio.create_task(client.run(incs, n=1, idempotency_key="mine"))
        await asyncio.sleep(0.35)  # past the submission's answer, while GetFlowRun waits
        call.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await call
    # With the caller's key the submission is answered at once (created or matched)
    assert fake.submits[0].wait_seconds == 0.0
    assert _cancels(fake) == ["fr-1"]
    assert any("cancelled flow run fr-1" in note for note in info.value.__notes__)
