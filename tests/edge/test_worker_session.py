"""WorkerSession (issue 18): a worker's LeaseTasks, ReportOutcomes and ReleaseLeases on one stream.

Against an in-process coordinator: the stream answers each request as its
unary call would (fencing included), a long poll never holds up a report, a
refusal of one request leaves the stream open, protocol violations end it with
a clear status, a newer session replaces an older one, and a coordinator that
stops serving or has sessions turned off says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle

import grpc
import pytest
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow_coordinator.errors import LimitExceeded
from fleetflow_coordinator.servicers import WorkerServicer
from fleetflow_coordinator.session import MAX_OUTSTANDING, Session, Sessions

from tests.review.helpers import plain, spec_of
from tests.review.rpc import coordinator

ACCEPTED, STALE = ws.OUTCOME_ACK_ACCEPTED, ws.OUTCOME_ACK_REJECTED_STALE


def _lease(rid: int, worker: str = "w", wait: float = 0.0, n: int = 1) -> ws.WorkerUp:
    request = ws.LeaseTasksRequest(worker_id=worker, max_task_runs=n, wait_seconds=wait)
    return ws.WorkerUp(id=rid, lease_tasks=request)


def _report(rid: int, *outcomes: ws.Outcome, worker: str = "w") -> ws.WorkerUp:
    request = ws.ReportOutcomesRequest(worker_id=worker, outcomes=list(outcomes))
    return ws.WorkerUp(id=rid, report_outcomes=request)


def _done(lease: ws.Lease, value=1) -> ws.Outcome:
    return ws.Outcome(task_run_id=lease.task_run_id, attempt=lease.attempt,
                      value=pickle.dumps(value))  # fmt: skip


async def _read(call, timeout: float = 5.0) -> ws.WorkerDown:
    async with asyncio.timeout(timeout):
        return await call.read()


async def _ended(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(5):
            while True:
                await call.read()
    return err.value


async def test_leases_and_outcomes_travel_as_messages_with_the_unary_calls_semantics():
    async with coordinator(lease_wait_max_s=5) as co:
        await co.register("w", ["t"])
        call = co.w.WorkerSession()
        await call.write(_lease(7, wait=5))  # a long poll: answered when work comes
        await asyncio.sleep(0.05)
        flow = (await co.submit(spec_of(plain("t", x=1), output_node=0))).flow_run_id
        down = await _read(call)
        assert down.id == 7 and down.WhichOneof("answer") == "lease_tasks"
        [lease] = down.lease_tasks.leases
        assert down.lease_tasks.known
        await call.write(_report(8, _done(lease, 42)))
        down = await _read(call)
        assert down.id == 8 and list(down.report_outcomes.acks) == [ACCEPTED]
        # the same outcome again (its answer lost, say): fenced as stale, changes nothing
        await call.write(_report(9, _done(lease, 99)))
        assert list((await _read(call)).report_outcomes.acks) == [STALE]
        got = await co.get(flow, wait=5, include_result=True)
        assert pickle.loads(got.result.pickled) == 42
        call.cancel()


async def test_a_long_poll_does_not_hold_up_a_report_behind_it():
    async with coordinator(lease_wait_max_s=5) as co:
        await co.register("w", ["t"], cpu=1)
        await co.submit(spec_of(plain("t", x=1), output_node=0))
        [lease] = (await co.lease("w")).leases
        call = co.w.WorkerSession()
        await call.write(_lease(1, wait=5))  # waits: the only slot is taken
        await call.write(_report(2, _done(lease)))
        down = await _read(call, timeout=2)  # the report's answer, not after the 5 s poll
        assert down.id == 2 and list(down.report_outcomes.acks) == [ACCEPTED]
        # the report freed the slot; a second flow's task run goes to the waiting poll
        await co.submit(spec_of(plain("t", x=2), output_node=0))
        down = await _read(call, timeout=3)
        assert down.id == 1 and len(down.lease_tasks.leases) == 1
        call.cancel()


async def test_a_refused_request_is_answered_for_its_id_and_the_stream_goes_on():
    async with coordinator() as co:
        await co.register("w", ["t"])
        call = co.w.WorkerSession()
        await call.write(_lease(1))
        assert (await _read(call)).lease_tasks.known
        await call.write(_lease(2, worker="other"))  # the stream belongs to "w"
        down = await _read(call)
        assert down.id == 2 and down.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "belongs to worker 'w'" in down.error.message
        await call.write(_lease(3, worker="x" * 200))  # the bounds table, as for LeaseTasks
        down = await _read(call)
        assert down.id == 3 and "(worker_id)" in down.error.message
        await call.write(_lease(4))
        assert (await _read(call)).id == 4  # still open
        call.cancel()


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        ([_lease(0)], grpc.StatusCode.INVALID_ARGUMENT, "WorkerUp.id: must not be 0"),
        ([ws.WorkerUp(id=3)], grpc.StatusCode.INVALID_ARGUMENT, "no call set"),
        ([_lease(1, wait=5), _lease(2, wait=5)], grpc.StatusCode.INVALID_ARGUMENT,
         "already unanswered (at most one)"),
        ([_lease(1, wait=5), _report(1)], grpc.StatusCode.INVALID_ARGUMENT,
         "a request with this id is unanswered"),
        ([b"\xff\xff\xff\xff"], grpc.StatusCode.INVALID_ARGUMENT, "not a valid protocol message"),
    ],
    ids=["id-0", "no-call", "two-long-polls", "repeated-id", "garbage"],
)  # fmt: skip
async def test_a_protocol_violation_ends_the_stream_with_a_clear_status(messages, code, words):
    async with coordinator(lease_wait_max_s=5) as co:
        await co.register("w", ["t"])
        raw = co.channel.stream_stream("/fleetflow.api.v1.WorkerService/WorkerSession")
        call = raw(timeout=10)
        for message in messages:
            await call.write(message if isinstance(message, bytes) else message.SerializeToString())
        error = await _ended(call)
        assert error.code() == code and words in error.details(), error.details()
        # the coordinator serves on: a new session works
        again = co.w.WorkerSession()
        await again.write(_lease(1))
        assert (await _read(again)).lease_tasks.known
        again.cancel()


async def test_too_many_unanswered_requests_end_the_stream():
    async with coordinator() as co:
        await co.register("w", ["t"])

        async def stuck() -> None:  # no commit ever completes: every request stays unanswered
            await asyncio.sleep(60)

        co.rt.durable = stuck
        call = co.w.WorkerSession()
        release = ws.ReleaseLeasesRequest(worker_id="w")
        for rid in range(1, MAX_OUTSTANDING + 2):
            await call.write(ws.WorkerUp(id=rid, release_leases=release))
        error = await _ended(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(session_requests)" in error.details()


class _StuckContext:
    """A stream whose worker never takes an answer."""

    async def write(self, message) -> None:
        await asyncio.sleep(60)


async def test_a_worker_that_does_not_read_ends_its_session_not_the_coordinator():
    async with coordinator() as co:
        servicer = WorkerServicer(co.rt)
        session = Session(servicer, _StuckContext(), Sessions(), asyncio.Event())
        session._write_timeout_s = 0.2
        down = ws.WorkerDown(id=1, release_leases=ws.ReleaseLeasesResponse())
        writer = asyncio.ensure_future(session._send(down))
        await asyncio.sleep(0)  # the writer is writing
        for _ in range(MAX_OUTSTANDING):  # queued behind the stuck write
            await session._send(down)
        assert not session._ended.done()
        await session._send(down)  # one more than the queue holds
        with pytest.raises(LimitExceeded, match="does not read"):
            session._ended.result()
        await asyncio.wait_for(writer, 2)  # the stuck write gave up too: nothing hangs

        session = Session(servicer, _StuckContext(), Sessions(), asyncio.Event())
        session._write_timeout_s = 0.2
        await asyncio.wait_for(session._send(down), 2)
        with pytest.raises(LimitExceeded, match="did not take an answer for 0.2 s"):
            session._ended.result()


async def test_a_cancel_abandons_a_long_poll():
    async with coordinator(lease_wait_max_s=5) as co:
        await co.register("w", ["t"])
        call = co.w.WorkerSession()
        await call.write(_lease(1, wait=5))
        await asyncio.sleep(0.05)
        await call.write(ws.WorkerUp(cancel=1))
        await call.write(_lease(2, wait=0))  # allowed: the first poll is gone
        down = await _read(call, timeout=2)
        assert down.id == 2
        # the abandoned poll leased nothing: a new flow's task run waits for a real ask
        await co.submit(spec_of(plain("t", x=1), output_node=0))
        await asyncio.sleep(0.1)
        assert not co.rt.core.workers["w"].running
        call.cancel()


async def test_a_cancel_that_beats_its_request_s_task_frees_the_long_poll():
    """A task cancelled before its first step never runs its own cleanup: its id is freed anyway."""
    from types import SimpleNamespace

    written: list = []

    async def lease_tasks(request, context):
        if request.wait_seconds:
            await asyncio.sleep(60)
        return ws.LeaseTasksResponse(known=True)

    async def write(down):
        written.append(down)

    servicer = SimpleNamespace(
        rt=SimpleNamespace(settings=SimpleNamespace(lease_ttl_s=5.0)),
        LeaseTasks=lease_tasks, ReportOutcomes=None, ReleaseLeases=None,
        _check_owner=lambda method, worker_id: None,
    )  # fmt: skip
    session = Session(servicer, SimpleNamespace(write=write), Sessions(), asyncio.Event())

    async def requests():
        yield _lease(1, wait=5)
        yield ws.WorkerUp(cancel=1)  # read before the loop ever ran request 1's task
        await asyncio.sleep(0.05)
        yield _lease(3, wait=0)  # refused as "already unanswered" if 1 still held the poll

    await session._read(requests())
    async with asyncio.timeout(5):
        while not written:
            await asyncio.sleep(0.01)
    answer = ws.WorkerDown.FromString(written[0]) if isinstance(written[0], bytes) else written[0]
    assert answer.id == 3 and answer.WhichOneof("answer") == "lease_tasks"
    assert not session._tasks and session._lease_id == 0


async def test_a_newer_session_of_a_worker_replaces_the_older_one():
    async with coordinator(lease_wait_max_s=5) as co:
        await co.register("w", ["t"])
        old, new = co.w.WorkerSession(), co.w.WorkerSession()
        await old.write(_lease(1, wait=5))
        await asyncio.sleep(0.05)
        await new.write(_lease(1))
        assert (await _read(new)).lease_tasks.known
        error = await _ended(old)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "replaced this one" in error.details()
        new.cancel()


async def test_a_stopping_coordinator_ends_its_sessions_at_once():
    async with coordinator(lease_wait_max_s=30) as co:
        await co.register("w", ["t"])
        call = co.w.WorkerSession()
        await call.write(_lease(1, wait=30))
        await asyncio.sleep(0.05)
        co.rt.serving_over.set()  # what run_active does on a stop, crash or deposition
        error = await _ended(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_coordinator_that_no_longer_leads_refuses_the_next_message():
    async with coordinator() as co:
        await co.register("w", ["t"])
        co.rt.leads = lambda: False  # the hot standby's lease ran out (a freeze, say)
        call = co.w.WorkerSession()
        await call.write(_lease(1))
        error = await _ended(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "standby coordinator" in error.details()


async def test_sessions_turned_off_answer_unimplemented():
    async with coordinator(worker_sessions=False) as co:
        call = co.w.WorkerSession()
        with contextlib.suppress(grpc.aio.AioRpcError):  # it may have ended already
            await call.write(_lease(1))
        error = await _ended(call)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "worker_sessions" in error.details()


async def test_a_standby_refuses_the_stream_naming_the_active_coordinator():
    from fleetflow_coordinator.security import Security
    from fleetflow_coordinator.settings import Settings
    from fleetflow_coordinator.standby import LeaderGate, _standby_server

    server, port, refuse = await _standby_server(Settings(), "127.0.0.1:0", Security())
    refuse.active = "10.0.0.7:50051"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = ws_grpc.WorkerServiceStub(channel).WorkerSession()
            with contextlib.suppress(grpc.aio.AioRpcError):  # refused at its start
                await call.write(_lease(1))
            error = await _ended(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == "standby coordinator; the active one is 10.0.0.7:50051"
    finally:
        await server.stop(0)

    class _Lapsed:  # a store whose leadership lease ran out
        epoch, fenced_at = 1, -1e9

    gate = LeaderGate(_Lapsed(), 10.0)  # type: ignore[arg-type]
    handler = await gate.intercept_service(None, _Details(_SESSION))
    assert handler.stream_stream is not None and handler.unary_unary is None


_SESSION = "/fleetflow.api.v1.WorkerService/WorkerSession"


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def test_answers_framed_by_hand_equal_the_messages_built_field_by_field():
    from fleetflow_coordinator.session import _answer_bytes

    lease = ws.LeaseTasksResponse(known=True)
    for i in range(300):  # a body over 16 KiB: a length of three varint bytes
        lease.leases.add(task_run_id=i, attempt=1, task_name="m:t" * 20, index=i)
    answers = {
        "lease_tasks": lease,
        "report_outcomes": ws.ReportOutcomesResponse(acks=[ACCEPTED, STALE]),
        "release_leases": ws.ReleaseLeasesResponse(),
    }
    for rid in (1, 127, 128, 300, 2**63 + 5):
        for kind, response in answers.items():
            built = ws.WorkerDown(id=rid)
            getattr(built, kind).CopyFrom(response)
            assert ws.WorkerDown.FromString(_answer_bytes(rid, kind, response)) == built


async def test_leases_granted_but_never_sent_go_back_uncharged():
    """A lease call cancelled while its grants are stored hands them back at once."""
    from fleetflow_coordinator.core import TaskRunState

    async with coordinator() as co:
        await co.register("w", ["t"])
        await co.submit(spec_of(plain("t", x=1), output_node=0))
        storing = asyncio.Event()
        durable = co.rt.durable

        async def stuck() -> None:  # the commit never comes back: the call is cancelled
            storing.set()
            await asyncio.sleep(60)

        co.rt.durable = stuck
        call = co.w.LeaseTasks(ws.LeaseTasksRequest(worker_id="w", max_task_runs=1), timeout=30)
        async with asyncio.timeout(5):
            await storing.wait()
        call.cancel()
        [tr] = co.rt.core.task_runs.values()
        async with asyncio.timeout(5):  # the server sees the cancel, hands the lease back
            while tr.state != TaskRunState.SCHEDULED:
                await asyncio.sleep(0.01)
        co.rt.durable = durable
        assert tr.attempt == 2 and tr.infra_failures == 0 and tr.code_failures == 0
        leases = (await co.lease("w", 1)).leases
        assert [(lease.task_run_id, lease.attempt) for lease in leases] == [(tr.id, 2)]
