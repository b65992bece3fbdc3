"""An in-process coordinator on 127.0.0.1 for RPC-level review tests."""

from __future__ import annotations

import contextlib

import grpc
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.server import create_server
from fleetflow_coordinator.settings import Settings
from fleetflow_coordinator.store import MemoryStore


class Coord:
    """A running Runtime + grpc.aio server, and stubs to it."""

    def __init__(self, runtime: Runtime, server, channel, port: int = 0) -> None:
        self.rt = runtime
        self.address = f"127.0.0.1:{port}"
        self.server = server
        self.channel = channel
        self.c = cs_grpc.CoordinatorServiceStub(channel)
        self.w = ws_grpc.WorkerServiceStub(channel)

    async def register(self, worker_id: str, tasks, cpu: float = 4.0, **kw):
        return await self.w.RegisterWorker(
            ws.RegisterWorkerRequest(
                worker_id=worker_id,
                capacity=common_pb2.Resources(amounts={"cpu": cpu}),
                task_names=list(tasks),
                **kw,
            ),
            timeout=5,
        )

    async def lease(self, worker_id: str, n: int = 10, wait: float = 0.0, timeout: float = 5):
        return await self.w.LeaseTasks(
            ws.LeaseTasksRequest(worker_id=worker_id, max_task_runs=n, wait_seconds=wait),
            timeout=timeout,
        )

    async def report(self, worker_id: str, *outcomes: ws.Outcome):
        return await self.w.ReportOutcomes(
            ws.ReportOutcomesRequest(worker_id=worker_id, outcomes=list(outcomes)), timeout=5
        )

    async def submit(self, spec, key: str = ""):
        return await self.c.SubmitFlowRun(
            cs.SubmitFlowRunRequest(spec=spec, idempotency_key=key), timeout=10
        )

    async def get(self, flow_run_id: str, wait: float = 0.0, include_result: bool = False):
        return await self.c.GetFlowRun(
            cs.GetFlowRunRequest(
                flow_run_id=flow_run_id, wait_seconds=wait, include_result=include_result
            ),
            timeout=wait + 5,
        )


@contextlib.asynccontextmanager
async def coordinator(store: MemoryStore | None = None, **settings):
    settings.setdefault("db", ":memory:")
    settings.setdefault("http", "off")
    rt = Runtime(Settings(**settings), store or MemoryStore())
    await rt.open()
    server, port = await create_server("127.0.0.1:0", rt)
    rt.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Coord(rt, server, channel, port)
    finally:
        await channel.close()
        await server.stop(grace=0.5)
        await rt.stop()
