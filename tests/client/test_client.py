"""Client and AsyncClient against a fake CoordinatorService (no real coordinator)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from fleetflow import (
    AsyncClient,
    Client,
    FlowRunCancelled,
    FlowRunFailed,
    FlowRunNotFound,
    InvalidFlowError,
    RemoteTaskError,
    RPCError,
    flow,
)
from fleetflow._client import Backoff
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
from fleetflow.serde import dumps, error_from_exception

from .fake_coordinator import FAST, CustomError, FakeCoordinator, incs, make_events

State = common_pb2.FlowRunState

# ------------------------------------------------------------------------ sync


def test_submit_builds_the_flow_and_sends_a_key(client, fake):
    handle = client.submit(incs, n=3)
    assert handle.id == "fr-1" and handle.created
    (request,) = fake.submits
    assert request.spec.name == "incs" and len(request.spec.nodes) == 1
    assert request.idempotency_key  # always sent, so retries are safe
    client.submit(incs, 2, idempotency_key="mine")
    assert fake.submits[1].idempotency_key == "mine"


def test_submit_invalid_flow(client):
    @flow(name="invalid")
    def bad():
        return None

    with pytest.raises(InvalidFlowError, match="task_name is empty"):
        client.submit(bad)


def test_submit_bad_params_fail_locally(client, fake):
    with pytest.raises(TypeError):
        client.submit(incs, m=3)
    assert fake.submits == []


def test_submit_retries_unavailable_with_the_same_key(client, fake):
    fake.unavailable["SubmitFlowRun"] = 3
    client.submit(incs, n=1)
    assert len(fake.submits) == 1 and fake.unavailable["SubmitFlowRun"] == 0


def test_get_decodes_info(client, fake):
    info = client.get("fr-1")
    assert (info.flow_run_id, info.name, info.state) == ("fr-1", "incs", "RUNNING")
    assert info.ended_at is None and not info.is_terminal and info.duration_s is None
    assert info.nodes[2].total is None and info.nodes[1].map
    assert (info.total, info.completed, info.failed, info.finished) == (5, 3, 1, 4)


def test_get_unknown_flow_run(client):
    with pytest.raises(FlowRunNotFound, match="nope"):
        client.get("nope")


def test_list_flow_runs(client):
    (run,) = client.list_flow_runs()
    assert run.flow_run_id == "fr-1"


def test_result_of_a_completed_map(client, fake):
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    fake.result = common_pb2.Value(list=common_pb2.ValueList(items=[dumps(1), dumps("two")]))
    assert client.result("fr-1") == [1, "two"]
    assert fake.gets[-1].include_result


def test_result_of_a_pickled_value(client, fake):
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    fake.result = common_pb2.Value(pickled=dumps({"a": 1}))
    assert client.submit(incs, n=1).result() == {"a": 1}


def test_result_reraises_the_original_exception(client, fake):
    fake.state = State.FLOW_RUN_STATE_FAILED
    try:
        raise CustomError("boom")
    except CustomError as exc:
        fake.error = error_from_exception(exc)
    with pytest.raises(CustomError, match="boom") as info:
        client.result("fr-1")
    notes = "\n".join(info.value.__notes__)
    assert "Remote traceback" in notes and 'raise CustomError("boom")' in notes
    assert "'inc'" in notes


def test_result_with_an_unpicklable_error(client, fake):
    fake.state = State.FLOW_RUN_STATE_FAILED
    fake.error = common_pb2.TaskError(type="gone.Error", message="lost", traceback="tb")
    with pytest.raises(RemoteTaskError, match="gone.Error: lost"):
        client.result("fr-1")


def test_result_failed_without_error(client, fake):
    fake.state = State.FLOW_RUN_STATE_FAILED
    with pytest.raises(FlowRunFailed):
        client.result("fr-1")


def test_result_cancelled(client, fake):
    fake.state = State.FLOW_RUN_STATE_CANCELLED
    with pytest.raises(FlowRunCancelled):
        client.result("fr-1")


def test_result_unknown(client):
    with pytest.raises(FlowRunNotFound):
        client.result("nope")


def test_result_times_out(client, fake):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.result("fr-1", timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert all(0 < g.wait_seconds <= 0.3 for g in fake.gets)


def test_wait_long_polls_until_the_end(client, fake):
    fake.finish_after_gets = 3
    assert client.handle("fr-1").wait() == "COMPLETED"
    assert len(fake.gets) == 3
    assert fake.gets[0].wait_seconds == 30.0 and not fake.gets[0].include_result


def test_unavailable_is_retried(client, fake):
    fake.unavailable["GetFlowRun"] = 4
    assert client.get("fr-1").state == "RUNNING"


def test_unavailable_gives_up_after_the_budget(fake):
    fake.unavailable["GetFlowRun"] = 10_000
    with Client(fake.address, backoff=Backoff(base_s=0.01, cap_s=0.02, give_up_s=0.2)) as c:
        started = time.monotonic()
        with pytest.raises(RPCError) as info:
            c.get("fr-1")
    assert info.value.code == "UNAVAILABLE"
    assert 0.15 < time.monotonic() - started < 2.0


def test_unavailable_past_the_callers_timeout_is_a_timeout(fake):
    fake.unavailable["GetFlowRun"] = 10_000
    with Client(fake.address, backoff=FAST) as c, pytest.raises(TimeoutError):
        c.wait("fr-1", timeout=0.3)


def test_watch_yields_until_the_terminal_event(client, fake):
    fake.events = make_events(3)
    kinds = [e.kind for e in client.watch("fr-1")]
    assert kinds == ["FLOW_RUN_SUBMITTED"] + ["TASK_RUN_COMPLETED"] * 3 + ["FLOW_RUN_COMPLETED"]


def test_watch_resumes_after_the_last_seq(client, fake):
    fake.events = make_events(5)
    fake.break_watch_after = 3
    events = list(client.handle("fr-1").events(after_seq=1))
    assert [e.seq for e in events] == [2, 3, 4, 5, 6, 7]
    assert [w.after_seq for w in fake.watches] == [1, 3]
    assert events[-1].is_terminal


def test_watch_unknown(client):
    with pytest.raises(FlowRunNotFound):
        list(client.watch("nope"))


def test_coordinator_restart_is_invisible(fake):
    """Nothing listens at first; a server that appears later is found by the retries."""
    probe = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = probe.add_insecure_port("127.0.0.1:0")
    probe.start()
    probe.stop(None)  # the port is free again: "the coordinator is down"

    servicer = FakeCoordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    timer = threading.Timer(0.7, server.start)
    timer.start()
    try:
        with Client(f"127.0.0.1:{port}", backoff=FAST) as c:
            assert c.get("fr-1").state == "RUNNING"
    finally:
        timer.join()
        server.stop(None)


# ----------------------------------------------------------------------- async


async def test_async_submit_result_and_events(fake):
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    fake.result = common_pb2.Value(pickled=dumps(42))
    fake.events = make_events(2)
    fake.break_watch_after = 2
    async with AsyncClient(fake.address, backoff=FAST) as c:
        handle = await c.submit(incs, n=2)
        assert await handle.result() == 42
        assert await handle.wait(timeout=5) == "COMPLETED"
        assert (await handle.get()).state == "COMPLETED"
        seqs = [e.seq async for e in handle.events()]
        assert seqs == [1, 2, 3, 4]
        assert [w.after_seq for w in fake.watches] == [0, 2]
        assert len(await c.list_flow_runs()) == 1


async def test_async_errors(fake):
    fake.unavailable["GetFlowRun"] = 2
    async with AsyncClient(fake.address, backoff=FAST) as c:
        with pytest.raises(FlowRunNotFound):
            await c.get("nope")
        with pytest.raises(TimeoutError):
            await c.result("fr-1", timeout=0.3)
        fake.state = State.FLOW_RUN_STATE_FAILED
        fake.error = error_from_exception(CustomError("async boom"))
        with pytest.raises(CustomError, match="async boom"):
            await c.result("fr-1")
        with pytest.raises(FlowRunNotFound):
            [e async for e in c.watch("nope")]


def test_backoff_grows_and_is_capped():
    import random

    policy = Backoff(base_s=0.05, cap_s=2.0)
    rng = random.Random(0)
    delays = [policy.delay_s(n, rng) for n in range(12)]
    assert 0.025 <= delays[0] <= 0.05
    assert all(1.0 <= d <= 2.0 for d in delays[6:])
    assert policy.delay_s(10_000, rng) <= 2.0
