"""The worker's end of WorkerSession (issue 18): SessionStub against an in-process coordinator.

It answers like the unary stub, falls back to the unary calls where the
coordinator answers UNIMPLEMENTED, surfaces a broken stream as the stream's
status and opens a new one for the next request, and abandons a request its
caller gave up on.
"""

from __future__ import annotations

import asyncio
import pickle

import grpc
import pytest
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_worker._rpc import CoordinatorConnection
from fleetflow_worker._session import SessionStub

from tests.review.helpers import plain, spec_of
from tests.review.rpc import coordinator


def _stub(co) -> tuple[SessionStub, CoordinatorConnection]:
    connection = CoordinatorConnection(co.address, [])
    return SessionStub(connection), connection


def _poll(wait: float = 0.0) -> ws.LeaseTasksRequest:
    return ws.LeaseTasksRequest(worker_id="w", max_task_runs=1, wait_seconds=wait)


async def test_the_hot_path_goes_over_one_stream_and_answers_like_the_unary_calls():
    async with coordinator(lease_wait_max_s=5) as co:
        stub, connection = _stub(co)
        try:
            register = ws.RegisterWorkerRequest(
                worker_id="w", task_names=["t"], capacity={"amounts": {"cpu": 1}}
            )
            await stub.RegisterWorker(register, timeout=5)
            poll = asyncio.ensure_future(stub.LeaseTasks(_poll(wait=5), timeout=10))
            await asyncio.sleep(0.05)
            flow = (await co.submit(spec_of(plain("t", x=1), output_node=0))).flow_run_id
            response = await asyncio.wait_for(poll, 5)
            assert isinstance(response, ws.LeaseTasksResponse) and stub.on_session
            [lease] = response.leases
            outcome = ws.Outcome(task_run_id=lease.task_run_id, attempt=lease.attempt,
                                 value=pickle.dumps(5))  # fmt: skip
            report = ws.ReportOutcomesRequest(worker_id="w", outcomes=[outcome])
            answer = await stub.ReportOutcomes(report, timeout=5)
            assert list(answer.acks) == [ws.OUTCOME_ACK_ACCEPTED]
            assert (await co.get(flow, wait=5)).info.state == 2  # COMPLETED
            # a refusal of one request: the unary call's status, the stream stays
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.LeaseTasks(ws.LeaseTasksRequest(worker_id="other"), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert stub.on_session
            released = await stub.ReleaseLeases(ws.ReleaseLeasesRequest(worker_id="w"), timeout=5)
            assert isinstance(released, ws.ReleaseLeasesResponse)
        finally:
            await stub.close()
            await connection.close()


async def test_a_coordinator_without_sessions_gets_the_unary_calls():
    async with coordinator(worker_sessions=False) as co:
        stub, connection = _stub(co)
        try:
            await co.register("w", ["t"])
            response = await stub.LeaseTasks(_poll(), timeout=5)
            assert response.known and not stub.on_session
            assert stub._unary_only == co.address  # no stream is tried again...
            await stub.LeaseTasks(_poll(), timeout=5)
            assert not stub.on_session
            await stub.RegisterWorker(ws.RegisterWorkerRequest(
                worker_id="w", task_names=["t"]), timeout=5)  # fmt: skip
            assert stub._unary_only is None  # ...until it registers again
        finally:
            await stub.close()
            await connection.close()


async def test_a_broken_stream_fails_the_waiting_request_and_the_next_one_reconnects():
    async with coordinator(lease_wait_max_s=30) as co:
        stub, connection = _stub(co)
        try:
            await co.register("w", ["t"])
            poll = asyncio.ensure_future(stub.LeaseTasks(_poll(wait=30), timeout=40))
            await asyncio.sleep(0.1)
            # another session of the same worker ends this one (as a restart would)
            other = co.w.WorkerSession()
            await other.write(ws.WorkerUp(id=1, lease_tasks=_poll()))
            await other.read()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(poll, 5)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert not stub.on_session
            assert (await stub.LeaseTasks(_poll(), timeout=5)).known  # a new stream
            assert stub.on_session
            other.cancel()
        finally:
            await stub.close()
            await connection.close()


async def test_a_request_given_up_is_cancelled_and_an_unanswered_one_times_out():
    async with coordinator(lease_wait_max_s=30) as co:
        stub, connection = _stub(co)
        try:
            await co.register("w", ["t"])
            poll = asyncio.ensure_future(stub.LeaseTasks(_poll(wait=30), timeout=40))
            await asyncio.sleep(0.1)
            poll.cancel()  # a drain stops the lease loop
            await asyncio.gather(poll, return_exceptions=True)
            await asyncio.sleep(0.1)
            # the coordinator dropped that poll: a new one is no "second long poll"
            assert (await stub.LeaseTasks(_poll(), timeout=5)).known
            assert stub.on_session
            # a long poll outliving its timeout: DEADLINE_EXCEEDED, the stream is dropped
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.LeaseTasks(_poll(wait=30), timeout=0.3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert not stub.on_session
            assert (await stub.LeaseTasks(_poll(), timeout=5)).known
        finally:
            await stub.close()
            await connection.close()
