"""SubmitFlowRun's wait for the end (issue 18): the handler, in process, without gRPC."""

from __future__ import annotations

import asyncio
import math
import pickle

from fleetflow import flow, task
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_coordinator.bounds import check_request
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.servicers import CoordinatorServicer, WorkerServicer
from fleetflow_coordinator.settings import Settings

State = common_pb2.FlowRunState


@task
def inc(x: int) -> int:
    return x + 1


@flow
def one(x: int):
    return inc(x)


class _Context:
    async def abort(self, code, details):
        raise AssertionError(f"aborted: {code} {details}")


async def _fleet_of_one() -> tuple[Runtime, WorkerServicer, CoordinatorServicer]:
    runtime = Runtime(Settings())
    runtime.start()
    workers, clients = WorkerServicer(runtime), CoordinatorServicer(runtime)
    node = one.build(x=0).nodes[0]
    await workers.RegisterWorker(
        ws.RegisterWorkerRequest(
            worker_id="w1",
            capacity={"amounts": {"cpu": 1.0}},
            task_names=[node.task_name],
            task_fingerprints={node.task_name: node.fingerprint},
            pid=1,
        ),
        _Context(),
    )
    return runtime, workers, clients


async def _run_one_task(workers: WorkerServicer, value: object) -> None:
    leased = await workers.LeaseTasks(
        ws.LeaseTasksRequest(worker_id="w1", max_task_runs=1, wait_seconds=5), _Context()
    )
    (lease,) = leased.leases
    report = ws.ReportOutcomesRequest(worker_id="w1")
    report.outcomes.add(
        task_run_id=lease.task_run_id, attempt=lease.attempt, value=pickle.dumps(value)
    )
    await workers.ReportOutcomes(report, _Context())


async def test_a_waiting_submission_answers_once_the_end_is_stored_with_the_result():
    runtime, workers, clients = await _fleet_of_one()
    try:
        request = cs.SubmitFlowRunRequest(
            spec=one.build(x=1), idempotency_key="k1", wait_seconds=5, include_result=True
        )
        call = asyncio.create_task(clients.SubmitFlowRun(request, _Context()))
        await asyncio.sleep(0.05)
        assert not call.done()  # stored and waiting for the end
        (flow_run,) = runtime.core.flows.values()
        await _run_one_task(workers, 2)
        answer = await asyncio.wait_for(call, 5)
        assert answer.flow_run_id == flow_run.id and answer.created
        assert answer.flow_run.info.state == State.FLOW_RUN_STATE_COMPLETED
        assert pickle.loads(answer.flow_run.result.pickled) == 2
        assert runtime.durably_ended(flow_run)  # never an end a crash could undo
        # The same key again: the same flow run, answered at once with its end.
        again = await asyncio.wait_for(clients.SubmitFlowRun(request, _Context()), 5)
        assert (again.flow_run_id, again.created) == (flow_run.id, False)
        assert pickle.loads(again.flow_run.result.pickled) == 2
        # GetFlowRun describes it the same way.
        got = await clients.GetFlowRun(
            cs.GetFlowRunRequest(flow_run_id=flow_run.id, include_result=True), _Context()
        )
        assert got == again.flow_run
        assert len(runtime.core.flows) == 1
    finally:
        await runtime.stop()


async def test_an_expired_wait_answers_running_and_no_wait_answers_without_the_flow_run():
    runtime, workers, clients = await _fleet_of_one()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited = await clients.SubmitFlowRun(
            cs.SubmitFlowRunRequest(spec=one.build(x=1), wait_seconds=0.2, include_result=True),
            _Context(),
        )
        assert 0.15 <= loop.time() - started < 5
        assert waited.HasField("flow_run")
        assert waited.flow_run.info.state == State.FLOW_RUN_STATE_RUNNING
        assert not waited.flow_run.HasField("result")
        plain = await clients.SubmitFlowRun(
            cs.SubmitFlowRunRequest(spec=one.build(x=2)), _Context()
        )
        assert not plain.HasField("flow_run")
    finally:
        await runtime.stop()


async def test_a_failed_flow_run_answers_with_its_first_error():
    runtime, workers, clients = await _fleet_of_one()
    try:
        request = cs.SubmitFlowRunRequest(spec=one.build(x=1), wait_seconds=5, include_result=True)
        call = asyncio.create_task(clients.SubmitFlowRun(request, _Context()))
        leased = await workers.LeaseTasks(
            ws.LeaseTasksRequest(worker_id="w1", max_task_runs=1, wait_seconds=5), _Context()
        )
        (lease,) = leased.leases
        report = ws.ReportOutcomesRequest(worker_id="w1")
        outcome = report.outcomes.add(task_run_id=lease.task_run_id, attempt=lease.attempt)
        outcome.error.type, outcome.error.message = "ValueError", "bad input"
        await workers.ReportOutcomes(report, _Context())
        answer = (await asyncio.wait_for(call, 5)).flow_run
        assert answer.info.state == State.FLOW_RUN_STATE_FAILED
        assert (answer.error.type, answer.error.message) == ("ValueError", "bad input")
        assert answer.error_task_name == lease.task_name
    finally:
        await runtime.stop()


def test_the_wait_is_clamped_as_get_flow_runs_is():
    for given, kept in ((1e9, 300.0), (math.inf, 0.0), (math.nan, 0.0), (-1.0, 0.0), (2.5, 2.5)):
        request = cs.SubmitFlowRunRequest(spec=one.build(x=1), wait_seconds=given)
        check_request(request)
        assert request.wait_seconds == kept, given
