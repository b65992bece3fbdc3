"""A scriptable in-process WorkerService for runtime tests (not a real coordinator)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from fleetflow.api.v1 import worker_service_pb2 as pb
from fleetflow.api.v1 import worker_service_pb2_grpc
from fleetflow.serde import dumps


def make_lease(
    task_run_id: int,
    task_name: str,
    *,
    attempt: int = 1,
    split: bool = False,
    timeout_s: float = 0.0,
    memory: float | None = None,
    **args,
) -> pb.Lease:
    lease = pb.Lease(
        task_run_id=task_run_id,
        attempt=attempt,
        task_name=task_name,
        flow_run_id="flow-1",
        split_result=split,
        timeout_seconds=timeout_s,
    )
    if memory is not None:
        lease.resources.amounts["memory"] = memory
    for name, value in args.items():
        lease.args.add(name=name).value.pickled = dumps(value)
    return lease


class FakeCoordinator(worker_service_pb2_grpc.WorkerServiceServicer):
    """Hands out queued leases and records what workers send (unary calls only)."""

    def __init__(self) -> None:
        self.registrations: list[pb.RegisterWorkerRequest] = []
        self.known: set[str] = set()
        self.leases: asyncio.Queue[pb.Lease] = asyncio.Queue()
        self.lease_requests: list[pb.LeaseTasksRequest] = []
        self.heartbeats: list[pb.HeartbeatRequest] = []
        self.outcomes: dict[tuple[int, int], pb.Outcome] = {}
        self.report_calls = 0
        self.fail_reports = 0
        self.cancel: list[pb.HeldTaskRun] = []
        self.released: list[tuple[int, int]] = []
        #: Answer ReleaseLeases with UNIMPLEMENTED, as an older coordinator does.
        self.release_unimplemented = False
        #: Honour ReportOutcomes.max_new_leases too (as the real coordinator does):
        #: hand out queued leases in the answer, without waiting.
        self.piggyback = False
        #: Leases handed out in ReportOutcomes answers.
        self.piggybacked = 0
        self._changed = asyncio.Condition()

    async def WorkerSession(self, request_iterator, context):  # noqa: N802
        """No session here, as on a coordinator older than it: the worker uses unary calls."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no WorkerSession in the fake")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def wait_outcomes(self, n: int, timeout_s: float = 10.0) -> dict:
        await self.wait_for(lambda: len(self.outcomes) >= n, timeout_s)
        return self.outcomes

    def forget_workers(self) -> None:
        """As after a restart: every worker is unknown."""
        self.known.clear()

    async def RegisterWorker(self, request, context):
        self.registrations.append(request)
        self.known.add(request.worker_id)
        await self._notify()
        return pb.RegisterWorkerResponse(lease_ttl_seconds=5, heartbeat_interval_seconds=0.05)

    async def Heartbeat(self, request, context):
        self.heartbeats.append(request)
        await self._notify()
        if request.worker_id not in self.known:
            return pb.HeartbeatResponse(known=False)
        cancel, self.cancel = self.cancel, []
        return pb.HeartbeatResponse(known=True, cancel=cancel)

    async def LeaseTasks(self, request, context):
        self.lease_requests.append(request)
        await self._notify()
        if request.worker_id not in self.known:
            return pb.LeaseTasksResponse(known=False)
        leases = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(request.wait_seconds):
                leases.append(await self.leases.get())
        while len(leases) < request.max_task_runs and not self.leases.empty():
            leases.append(self.leases.get_nowait())
        return pb.LeaseTasksResponse(known=True, leases=leases)

    async def ReportOutcomes(self, request, context):
        self.report_calls += 1
        if self.fail_reports > 0:
            self.fail_reports -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")
        for outcome in request.outcomes:
            self.outcomes[(outcome.task_run_id, outcome.attempt)] = outcome
        await self._notify()
        leases = []
        while self.piggyback and len(leases) < request.max_new_leases and not self.leases.empty():
            leases.append(self.leases.get_nowait())
        self.piggybacked += len(leases)
        return pb.ReportOutcomesResponse(
            acks=[pb.OUTCOME_ACK_ACCEPTED] * len(request.outcomes), leases=leases
        )

    async def ReleaseLeases(self, request, context):
        if self.release_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.released.extend((h.task_run_id, h.attempt) for h in request.released)
        await self._notify()
        return pb.ReleaseLeasesResponse()


async def start_server(fake: FakeCoordinator, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port
