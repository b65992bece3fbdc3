"""Group commits on the round trip of a one-task flow (issue 18): what joins which commit."""

from __future__ import annotations

import asyncio

from fleetflow import flow, task
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.servicers import CoordinatorServicer, WorkerServicer
from fleetflow_coordinator.settings import Settings


@task
def inc(x: int) -> int:
    return x + 1


@flow
def one(x: int):
    return inc(x)


class _Context:
    async def abort(self, code, details):
        raise AssertionError(f"aborted: {code} {details}")


async def test_a_waiting_long_poll_leases_in_the_submissions_commit():
    runtime = Runtime(Settings())
    writes: list[int] = []
    write = runtime.writer.write

    async def counted(batch):
        writes.append(1)
        await write(batch)

    runtime.writer.write = counted  # type: ignore[method-assign]
    runtime.start()
    workers, clients = WorkerServicer(runtime), CoordinatorServicer(runtime)
    spec = one.build(x=1)
    node = spec.nodes[0]
    try:
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
        await asyncio.sleep(0.05)
        request = ws.LeaseTasksRequest(worker_id="w1", max_task_runs=1, wait_seconds=5)
        poll = asyncio.create_task(workers.LeaseTasks(request, _Context()))
        await asyncio.sleep(0.05)  # the long poll waits
        assert not poll.done()
        before = len(writes)
        submitted = await clients.SubmitFlowRun(cs.SubmitFlowRunRequest(spec=spec), _Context())
        leased = await asyncio.wait_for(poll, 5)
        assert [lease.task_run_id for lease in leased.leases]
        # One commit stored the submission and the lease it woke.
        assert len(writes) - before == 1
        flow_run = runtime.core.flows[submitted.flow_run_id]
        assert flow_run.durable_seq == len(flow_run.events)
    finally:
        await runtime.stop()


async def test_get_flow_run_wakes_once_the_end_is_stored_not_on_every_commit():
    from tests.dashboard.drive import Clock, map_node, ok, submit

    clock = Clock()
    runtime = Runtime(Settings(), clock=clock)
    runtime.start()
    try:
        core = runtime.core
        core.register_worker("w1", {"cpu": 2.0}, frozenset({"t"}), clock())
        flow = submit(core, clock, [map_node("t", 2)])
        runtime.after_change()
        await runtime.durable()
        grown, ended = runtime.flow_signal(flow.id), runtime.flow_end_signal(flow.id)
        first, second = core.lease("w1", 2, clock())
        core.report("w1", [ok(first)], clock())
        runtime.after_change()
        await runtime.durable()
        assert grown.is_set() and not ended.is_set()  # stored events grew; no end yet
        core.report("w1", [ok(second)], clock())
        runtime.after_change()
        assert not ended.is_set()  # ended in the core, not stored yet
        await runtime.durable()
        assert ended.is_set() and runtime.durably_ended(flow)
    finally:
        await runtime.stop()
