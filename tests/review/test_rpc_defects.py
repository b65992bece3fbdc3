# ruff: noqa: E501 - xfail reasons are one-line bug descriptions
"""Hostile or malformed RPCs sent straight to an in-process coordinator."""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
import time

import grpc
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc

from .helpers import plain, spec_of
from .rpc import coordinator

ACCEPTED = ws.OUTCOME_ACK_ACCEPTED
COMPLETED = common_pb2.FLOW_RUN_STATE_COMPLETED
RUNNING = common_pb2.FLOW_RUN_STATE_RUNNING


async def test_unregistered_worker_cannot_complete_another_workers_attempt():
    async with coordinator() as co:
        await co.register("honest", ["t"])
        flow_id = (await co.submit(spec_of(plain("t", x=1), output_node=0))).flow_run_id
        [lease] = (await co.lease("honest", 1)).leases
        acks = (
            await co.report(
                "stranger",
                ws.Outcome(task_run_id=lease.task_run_id, attempt=1, value=pickle.dumps("forged")),
            )
        ).acks
        info = await co.get(flow_id, include_result=True)
        assert list(acks) != [ACCEPTED] and info.info.state == RUNNING, (
            "a worker that was never registered (and never held the lease) completed the "
            f"flow run with {pickle.loads(info.result.pickled)!r}"
        )


async def test_invalid_map_submission_is_rejected_whole_over_rpc():
    async with coordinator() as co:
        bad = common_pb2.TaskNode(task_name="m", map=True)
        bad.args.add(name="x", literal=pickle.dumps([1, 2]), mapped=True)
        spec = spec_of(plain("a"), bad)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.submit(spec, key="k1")
        code = err.value.code()
        runs = (await co.c.ListFlowRuns(cs.ListFlowRunsRequest(), timeout=5)).flow_runs
        again = await co.submit(spec, key="k1") if runs else None
        assert code == grpc.StatusCode.INVALID_ARGUMENT and not runs, (
            f"status {code.name}; left behind {len(runs)} flow run(s) stuck RUNNING "
            f"(a retry with the same key answers created={again and again.created})"
        )


async def test_lease_tasks_with_nan_wait_returns_within_the_long_poll_bound():
    async with coordinator(lease_wait_max_s=0.5) as co:
        await co.register("w", ["t"])
        started = time.monotonic()
        try:
            await co.lease("w", 1, wait=math.nan, timeout=3.0)
        except grpc.aio.AioRpcError as exc:
            pytest.fail(
                f"{exc.code().name} after {time.monotonic() - started:.1f}s ({exc.details()}): "
                "wait_seconds=NaN is not validated; on asyncio the long poll never answers, "
                "on uvloop (production) it raises ValueError"
            )


async def test_infinite_peak_memory_in_an_outcome_is_ignored_not_an_rpc_error():
    async with coordinator() as co:
        await co.register("w", ["t"])
        await co.submit(spec_of(plain("t", x=1), output_node=0))
        [lease] = (await co.lease("w", 1)).leases
        outcome = ws.Outcome(
            task_run_id=lease.task_run_id,
            attempt=lease.attempt,
            value=pickle.dumps(1),
            peak_memory_bytes=math.inf,
            cpu_seconds=1.0,
        )
        try:
            acks = (await co.report("w", outcome)).acks
        except grpc.aio.AioRpcError as exc:
            pytest.fail(
                f"ReportOutcomes failed with {exc.code().name} after the core had already "
                "applied the outcome; the worker's resend is then answered REJECTED_STALE"
            )
        assert list(acks) == [ACCEPTED]


async def test_items_for_a_non_split_lease_do_not_break_another_workers_lease():
    async with coordinator() as co:
        await co.register("liar", ["a"])
        await co.register("other", ["g", "b"])
        spec = spec_of(plain("a"), plain("b"), plain("g", xs=("nodes", [0, 1])), output_node=2)
        await co.submit(spec)
        [la] = (await co.lease("liar", 1)).leases
        assert not la.split_result
        await co.report(
            "liar",
            ws.Outcome(
                task_run_id=la.task_run_id,
                attempt=la.attempt,
                items=common_pb2.ValueList(items=[b"x", b"y"]),
            ),
        )
        [lb] = (await co.lease("other", 1)).leases
        await co.report(
            "other", ws.Outcome(task_run_id=lb.task_run_id, attempt=1, value=pickle.dumps(2))
        )
        try:
            await co.lease("other", 5)
        except grpc.aio.AioRpcError as exc:
            pytest.fail(
                f"the honest worker's LeaseTasks failed with {exc.code().name}: "
                f"{exc.details()}; its grant is left RUNNING and undelivered"
            )


async def test_one_huge_literal_map_does_not_make_the_coordinator_drop_live_workers():
    """A ~1.2 MB submission blocks the loop past the lease TTL; heartbeating workers are lost.

    The worker heartbeats from its own thread and channel every 0.1 s, as a real
    worker process would.
    """
    async with coordinator(lease_ttl_s=0.5, heartbeat_interval_s=0.1) as co:
        await co.register("w", ["t"])
        address = co.address
        stop = threading.Event()
        unknown = []

        def heartbeats():
            with grpc.insecure_channel(address) as ch:
                stub = ws_grpc.WorkerServiceStub(ch)
                for _ in range(600):  # bounded: at most ~60 s
                    if stop.is_set():
                        return
                    r = stub.Heartbeat(ws.HeartbeatRequest(worker_id="w"), timeout=30)
                    if not r.known:
                        unknown.append(time.monotonic())
                    time.sleep(0.1)

        beat = threading.Thread(target=heartbeats, daemon=True)
        beat.start()
        await asyncio.sleep(0.5)
        lost_before = co.rt.metrics.workers_lost._value.get()
        n = 600_000
        huge = common_pb2.TaskNode(task_name="t", map=True)
        huge.args.add(name="x", literal_items=common_pb2.ValueList(items=[b""] * n), mapped=True)
        try:
            await co.submit(spec_of(huge))
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.to_thread(beat.join, 30)
        lost = co.rt.metrics.workers_lost._value.get() - lost_before
        assert lost == 0 and not unknown, (
            f"submitting one {n}-item map blocked the event loop past the 0.5 s lease TTL: "
            "a worker that kept heartbeating from another thread was declared lost"
        )


async def test_items_for_a_non_split_lease_do_not_break_another_workers_report():
    async with coordinator() as co:
        await co.register("liar", ["a"])
        await co.register("other", ["g", "b"])
        spec = spec_of(plain("a"), plain("b"), plain("g", xs=("nodes", [0, 1])), output_node=2)
        await co.submit(spec)
        [la] = (await co.lease("liar", 1)).leases
        await co.report(
            "liar",
            ws.Outcome(
                task_run_id=la.task_run_id,
                attempt=la.attempt,
                items=common_pb2.ValueList(items=[b"x", b"y"]),
            ),
        )
        [lb] = (await co.lease("other", 1)).leases
        request = ws.ReportOutcomesRequest(
            worker_id="other",
            outcomes=[ws.Outcome(task_run_id=lb.task_run_id, attempt=1, value=pickle.dumps(2))],
            max_new_leases=4,
        )
        try:
            await co.w.ReportOutcomes(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            pytest.fail(
                f"the honest worker's ReportOutcomes failed with {exc.code().name} "
                f"({exc.details()}) although its outcome was applied"
            )
