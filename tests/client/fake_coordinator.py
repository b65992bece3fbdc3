"""A fake CoordinatorService for client tests: answers from fields tests set."""

from __future__ import annotations

import time

import grpc
from fleetflow import flow, task
from fleetflow._client import Backoff
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc

FAST = Backoff(base_s=0.01, cap_s=0.05, give_up_s=5.0)
State = common_pb2.FlowRunState
Kind = common_pb2.EventKind


@task
def inc(x: int) -> int:
    return x + 1


@flow
def incs(n: int):
    return inc.map(range(n))


class CustomError(Exception):
    pass


class FakeCoordinator(pb_grpc.CoordinatorServiceServicer):
    """Answers from fields that tests set; records what it was asked."""

    def __init__(self) -> None:
        self.submits: list[pb.SubmitFlowRunRequest] = []
        self.gets: list[pb.GetFlowRunRequest] = []
        self.watches: list[pb.WatchFlowRunRequest] = []
        #: Requests of the calls below that have no list of their own.
        self.requests: list = []
        #: {method name: number of calls still to fail with UNAVAILABLE}
        self.unavailable: dict[str, int] = {}
        self.state = State.FLOW_RUN_STATE_RUNNING
        self.result = common_pb2.Value()
        self.error = common_pb2.TaskError()
        self.events: list[common_pb2.Event] = []
        #: The first watch stream breaks with UNAVAILABLE after this many events.
        self.break_watch_after: int | None = None
        self.finish_after_gets: int | None = None
        #: Watch streams keep open after their events until the client leaves.
        self.hold_watch = False
        #: Watch streams that ended on the server's side.
        self.watch_ends = 0
        #: SubmitFlowRun honours wait_seconds (False: a coordinator that predates it).
        self.submit_waits = True
        #: SubmitFlowRun answers created=False (the key matched an existing run).
        self.matched = False
        #: SubmitFlowRun calls whose answer is lost (UNAVAILABLE after recording them).
        self.lose_submit_answers = 0

    def _maybe_fail(self, method, context):
        if self.unavailable.get(method, 0) > 0:
            self.unavailable[method] -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def _info(self) -> pb.FlowRunInfo:
        return pb.FlowRunInfo(
            flow_run_id="fr-1",
            name="incs",
            state=self.state,
            created_at=100.0,
            ended_at=0.0 if self.state == State.FLOW_RUN_STATE_RUNNING else 105.0,
            last_seq=len(self.events),
            nodes=[
                pb.TaskCounts(node=0, task_name="numbers", total=1, completed=1),
                pb.TaskCounts(node=1, task_name="inc", map=True, total=4, completed=2, failed=1),
                pb.TaskCounts(node=2, task_name="total", total=-1),
            ],
        )

    def SubmitFlowRun(self, request, context):
        self._maybe_fail("SubmitFlowRun", context)
        self.submits.append(request)
        if request.spec.name == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node 0: task_name is empty")
        response = pb.SubmitFlowRunResponse(flow_run_id="fr-1", created=not self.matched)
        if self.submit_waits and request.wait_seconds > 0:
            self._describe(request, response.flow_run)
        if self.lose_submit_answers > 0:
            self.lose_submit_answers -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "the answer was lost")
        return response

    def CancelFlowRun(self, request, context):
        self._maybe_fail("CancelFlowRun", context)
        self.requests.append(request)
        self.state = State.FLOW_RUN_STATE_CANCELLED
        return pb.CancelFlowRunResponse(cancelled=1)

    def GetFlowRun(self, request, context):
        self._maybe_fail("GetFlowRun", context)
        self.gets.append(request)
        if request.flow_run_id != "fr-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"flow run {request.flow_run_id}")
        if self.finish_after_gets is not None and len(self.gets) >= self.finish_after_gets:
            self.state = State.FLOW_RUN_STATE_COMPLETED
        response = pb.GetFlowRunResponse()
        self._describe(request, response)
        return response

    def _describe(self, request, response) -> None:
        if self.state == State.FLOW_RUN_STATE_RUNNING and request.wait_seconds > 0:
            time.sleep(min(request.wait_seconds, 0.2))
        response.info.CopyFrom(self._info())
        if request.include_result:
            if self.state == State.FLOW_RUN_STATE_COMPLETED:
                response.result.CopyFrom(self.result)
            elif self.state == State.FLOW_RUN_STATE_FAILED:
                response.error.CopyFrom(self.error)
                response.error_task_name = "inc"

    def ListFlowRuns(self, request, context):
        self._maybe_fail("ListFlowRuns", context)
        return pb.ListFlowRunsResponse(flow_runs=[self._info()])

    def CancelTaskRun(self, request, context):
        self._maybe_fail("CancelTaskRun", context)
        self.requests.append(request)
        return pb.CancelTaskRunResponse(cancelled=1 if request.task_run_id == 7 else 0)

    def SetConcurrencyLimit(self, request, context):
        self._maybe_fail("SetConcurrencyLimit", context)
        self.requests.append(request)
        if not request.tag:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tag: must not be empty")
        return pb.SetConcurrencyLimitResponse()

    def GetDemand(self, request, context):
        self._maybe_fail("GetDemand", context)
        self.requests.append(request)
        demand = pb.Demand(pool="gpu", waiting=3, task_names=["train"])
        demand.resources.amounts["gpu"] = 1.0
        return pb.GetDemandResponse(demand=[demand])

    def PruneFlowRuns(self, request, context):
        self._maybe_fail("PruneFlowRuns", context)
        self.requests.append(request)
        return pb.PruneFlowRunsResponse(pruned_flow_run_ids=["fr-0"])

    def WatchFlowRun(self, request, context):
        self._maybe_fail("WatchFlowRun", context)
        self.watches.append(request)
        if request.flow_run_id != "fr-1":
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown")
        pending = [e for e in self.events if e.seq > request.after_seq]
        try:
            for event in pending:
                if self.break_watch_after is not None and event.seq > self.break_watch_after:
                    self.break_watch_after = None
                    context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
                yield pb.WatchFlowRunResponse(events=[event])
            deadline = time.monotonic() + 30
            while self.hold_watch and context.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self.watch_ends += 1


def make_events(n_tasks: int, final=Kind.EVENT_KIND_FLOW_RUN_COMPLETED) -> list[common_pb2.Event]:
    kinds = [Kind.EVENT_KIND_FLOW_RUN_SUBMITTED]
    kinds += [Kind.EVENT_KIND_TASK_RUN_COMPLETED] * n_tasks
    kinds += [final]
    return [
        common_pb2.Event(seq=i + 1, kind=k, flow_run_id="fr-1", time=100.0 + i, task_run_id=i)
        for i, k in enumerate(kinds)
    ]
