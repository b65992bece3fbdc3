"""Hostile inputs and odd orders that the coordinator handles correctly (regression guards)."""

from __future__ import annotations

import math
import pickle

import grpc
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_coordinator.core import Outcome, Scheduler, TaskRunState
from fleetflow_coordinator.core.model import EventKind, FlowRunState

from .helpers import mapnode, plain, spec_of, submit
from .rpc import coordinator

NOW = 1000.0
ERR = common_pb2.TaskError(type="builtins.ValueError", message="boom")


def _bad_specs():
    def with_arg(**kw):
        n = plain("t")
        n.args.add(**kw)
        return n

    no_source = plain("t")
    no_source.args.add(name="x")
    yield "forward ref", spec_of(with_arg(name="x", node=1), plain("u"))
    yield "self ref", spec_of(with_arg(name="x", node=0))
    yield "huge ref", spec_of(plain("u"), with_arg(name="x", node=2**32 - 1))
    yield (
        "gather ref out of range",
        spec_of(plain("u"), with_arg(name="x", nodes=common_pb2.NodeList(nodes=[0, 7]))),
    )
    yield "empty gather", spec_of(with_arg(name="x", nodes=common_pb2.NodeList()))
    yield "empty task name", spec_of(common_pb2.TaskNode(task_name=""))
    yield "empty arg name", spec_of(with_arg(name="", literal=b"x"))
    yield (
        "duplicate arg",
        spec_of(
            plain("t", x=1, y=2).__class__(
                task_name="t",
                args=[
                    common_pb2.ArgSpec(name="x", literal=b"1"),
                    common_pb2.ArgSpec(name="x", literal=b"2"),
                ],
            )
        ),
    )
    yield "no source", spec_of(no_source)
    yield "mapped on a plain node", spec_of(plain("u"), with_arg(name="x", node=0, mapped=True))
    yield (
        "literal_items unmapped",
        spec_of(with_arg(name="x", literal_items=common_pb2.ValueList(items=[b"1"]))),
    )
    yield "map without mapped arg", spec_of(common_pb2.TaskNode(task_name="m", map=True))
    yield (
        "gather of a map",
        spec_of(
            mapnode("m", x=("items", [1, 2])),
            with_arg(name="xs", nodes=common_pb2.NodeList(nodes=[0])),
        ),
    )
    yield "output out of range", spec_of(plain("t"), output_node=5)
    nan = plain("t")
    nan.resources.amounts["cpu"] = math.nan
    yield "NaN resource", spec_of(nan)
    neg = plain("t")
    neg.retry.CopyFrom(common_pb2.RetryPolicy(retries=1, retry_delay_seconds=-1))
    yield "negative delay", spec_of(neg)
    jit = plain("t")
    jit.retry.CopyFrom(common_pb2.RetryPolicy(jitter=2))
    yield "jitter > 1", spec_of(jit)
    unequal = mapnode("m", x=("items", [1, 2]), y=("items", [1]))
    yield "unequal literal lists", spec_of(unequal)


@pytest.mark.parametrize("what,spec", list(_bad_specs()), ids=[w for w, _ in _bad_specs()])
def test_invalid_specs_are_rejected_whole_in_the_core(what, spec):
    core = Scheduler()
    from fleetflow_coordinator.convert import node_specs
    from fleetflow_coordinator.core import InvalidFlowSpec

    with pytest.raises(InvalidFlowSpec):
        core.submit(
            "f",
            "x",
            node_specs(spec),
            NOW,
            output_node=spec.output_node if spec.HasField("output_node") else None,
            idempotency_key="k",
        )
    assert core.flows == {} and core.task_runs == {} and core.idempotency == {}
    assert not core.has_changes()


async def test_hostile_worker_rpcs_are_ignored_and_honest_flows_complete():
    async with coordinator() as co:
        await co.register("honest", ["t"])
        # Capacity that is not a finite, non-negative number is refused.
        for amount in (math.nan, -1.0, math.inf):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await co.w.RegisterWorker(
                    ws.RegisterWorkerRequest(
                        worker_id="evil",
                        capacity=common_pb2.Resources(amounts={"cpu": amount}),
                        task_names=["t"],
                    ),
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await co.register("evil", ["nothing"])
        flow_id = (await co.submit(spec_of(plain("t", x=1), output_node=0))).flow_run_id
        [lease] = (await co.lease("honest", 2**32 - 1)).leases
        tr = lease.task_run_id
        acks = (
            await co.report(
                "evil",
                ws.Outcome(task_run_id=tr, attempt=2**32 - 1, value=b"x"),
                ws.Outcome(task_run_id=tr, attempt=0, value=b"x"),
                ws.Outcome(task_run_id=2**64 - 1, attempt=1, value=b"x"),
            )
        ).acks
        assert list(acks) == [
            ws.OUTCOME_ACK_REJECTED_STALE,
            ws.OUTCOME_ACK_REJECTED_STALE,
            ws.OUTCOME_ACK_REJECTED_UNKNOWN,
        ]
        await co.w.ReleaseLeases(
            ws.ReleaseLeasesRequest(
                worker_id="evil", released=[ws.HeldTaskRun(task_run_id=tr, attempt=1)]
            ),
            timeout=5,
        )
        await co.register("evil", ["t"], running=[ws.HeldTaskRun(task_run_id=tr, attempt=1)])
        hb = await co.w.Heartbeat(
            ws.HeartbeatRequest(
                worker_id="evil", running=[ws.HeldTaskRun(task_run_id=tr, attempt=1)]
            ),
            timeout=5,
        )
        assert [h.task_run_id for h in hb.cancel] == [tr]  # told it is not its attempt
        assert (await co.lease("nobody", 0)).known is False
        assert co.rt.core.task_runs[tr].worker_id == "honest"
        assert co.rt.core.task_runs[tr].attempt == 1
        acks = (
            await co.report("honest", ws.Outcome(task_run_id=tr, attempt=1, value=pickle.dumps(42)))
        ).acks
        assert list(acks) == [ws.OUTCOME_ACK_ACCEPTED]
        info = await co.get(flow_id, wait=5, include_result=True)
        assert info.info.state == common_pb2.FLOW_RUN_STATE_COMPLETED
        assert pickle.loads(info.result.pickled) == 42


async def test_invalid_submissions_over_rpc_are_invalid_argument_and_keep_nothing():
    async with coordinator() as co:
        for what, spec in _bad_specs():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await co.submit(spec, key=what)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        runs = await co.c.ListFlowRuns(cs.ListFlowRunsRequest(), timeout=5)
        assert not runs.flow_runs


def test_outcome_with_no_result_is_a_task_failure():
    from fleetflow_coordinator.convert import outcome_from_proto

    o = outcome_from_proto(ws.Outcome(task_run_id=1, attempt=1))
    assert o.error is not None and o.error.type == "fleetflow.ProtocolError"


def _one(retries=0, delay=0.0):
    core = Scheduler(lease_ttl_s=10.0)
    core.register_worker("w", {"cpu": 2}, frozenset({"t"}), NOW)
    n = plain("t")
    n.retry.CopyFrom(common_pb2.RetryPolicy(retries=retries, retry_delay_seconds=delay))
    flow = submit(core, spec_of(n), "f", NOW)
    [g] = core.lease("w", 1, NOW)
    return core, flow, g


def test_outcome_after_worker_lost_before_release_is_stale():
    core, flow, g = _one()
    core.tick(NOW + 11)  # no heartbeat: worker lost, attempt 2 queued
    tr = g.task_run
    assert tr.state == TaskRunState.SCHEDULED and tr.attempt == 2
    assert core.report("w", [Outcome(tr.id, 1, value=b"late")], NOW + 12) == [2]
    assert tr.state == TaskRunState.SCHEDULED and tr.result is None
    assert EventKind.LATE_RESULT_REJECTED in [e.kind for e in flow.events]


def test_cancel_during_awaiting_retry_then_timer_and_late_outcome_change_nothing():
    core, flow, g = _one(retries=2, delay=30)
    tr = g.task_run
    core.report("w", [Outcome(tr.id, 1, error=ERR)], NOW)
    assert tr.state == TaskRunState.AWAITING_RETRY
    assert core.cancel_flow("f", NOW + 1) == 1
    assert tr.state == TaskRunState.CANCELLED and flow.state == FlowRunState.CANCELLED
    core.heartbeat("w", [], NOW + 40)
    core.tick(NOW + 40)
    assert tr.state == TaskRunState.CANCELLED
    assert core.report("w", [Outcome(tr.id, 2, value=b"x")], NOW + 41) == [2]
    assert not any(core.slots_held.values())
    assert all(a == 0 for a in core.workers["w"].allocated.values())


def test_cancel_running_then_late_outcome_is_stale_and_resources_are_free():
    core, flow, g = _one()
    tr = g.task_run
    tr.node.concurrency_limit = 1
    core.slots_held[("task", "t")] = 1  # as if the lease had been taken under the limit
    core.cancel_task_run(tr.id, NOW)
    assert core.workers["w"].allocated["cpu"] == 0 and core.workers["w"].running == {}
    assert core.report("w", [Outcome(tr.id, 1, value=b"x")], NOW) == [2]
    assert flow.state == FlowRunState.CANCELLED
    known, cancel = core.heartbeat("w", [(tr.id, 1)], NOW)
    assert known and cancel == [(tr.id, 1)]
