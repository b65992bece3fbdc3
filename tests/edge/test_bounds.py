"""The bounds table: every refusal names the field and the limit; measured numbers are clamped."""

from __future__ import annotations

import math
import pathlib
import pickle
import re

import grpc
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_coordinator.bounds import _CHECKS, BOUNDS, MAX_SECONDS

from tests.review.helpers import mapnode, plain, spec_of
from tests.review.rpc import coordinator

from .test_error_table import METHODS

ROOT = pathlib.Path(__file__).resolve().parents[2]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_every_request_type_has_a_check():
    names = {t.DESCRIPTOR.full_name for t in _CHECKS}
    for module in (cs, ws, ts):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                assert m.input_type.full_name in names, m.full_name
    assert len(_CHECKS) == len(METHODS)


def test_readme_and_architecture_list_every_bound():
    readme = (ROOT / "README.md").read_text()
    limits = readme.split("## Limits", 1)[1].split("\n## ", 1)[0]
    arch = (ROOT / "docs" / "architecture.md").read_text()
    for key in BOUNDS:
        assert re.search(rf"`{key}`", limits), f"README ## Limits lacks the `{key}` row"
        assert f"`{key}`" in arch, f"docs/architecture.md lacks the `{key}` bound"


def _node(**kw) -> common_pb2.TaskNode:
    node = plain("t", x=1)
    for name, value in kw.items():
        setattr(node, name, value)
    return node


def _spec_cases():
    def with_node(mutate):
        node = plain("t", x=1)
        mutate(node)
        return spec_of(node, output_node=0)

    big_items = mapnode("m", x=("items", [0]))
    del big_items.args[0].literal_items.items[:]
    big_items.args[0].literal_items.items.extend([b""] * 1_000_001)
    return [
        ("flow_name", INVALID, lambda: common_pb2.FlowSpec(name="f" * 257), "256"),
        ("flow_name ctl", INVALID, lambda: common_pb2.FlowSpec(name="a\nb"), "printable"),
        ("task_name", INVALID, lambda: with_node(lambda n: setattr(n, "task_name", "t" * 513)),
         "512"),
        ("tag", INVALID, lambda: with_node(lambda n: n.tags.append("g" * 129)), "128"),
        ("tags", EXHAUSTED, lambda: with_node(lambda n: n.tags.extend(["g"] * 33)), "32"),
        ("pool", INVALID, lambda: with_node(lambda n: setattr(n, "pool", "p" * 129)), "128"),
        ("resource_name", INVALID,
         lambda: with_node(lambda n: n.resources.amounts.update({"r" * 65: 1})), "64"),
        ("resources", EXHAUSTED,
         lambda: with_node(lambda n: n.resources.amounts.update({f"r{i}": 1 for i in range(33)})),
         "32"),
        ("amount nan", INVALID,
         lambda: with_node(lambda n: n.resources.amounts.update({"cpu": math.nan})), "finite"),
        ("amount huge", INVALID,
         lambda: with_node(lambda n: n.resources.amounts.update({"cpu": 1e300})), "amount"),
        ("timeout inf", INVALID,
         lambda: with_node(lambda n: setattr(n, "timeout_seconds", math.inf)), "seconds"),
        ("retry delay", INVALID,
         lambda: with_node(lambda n: setattr(n.retry, "retry_delay_seconds", -1.0)), "seconds"),
        ("retry delays", EXHAUSTED,
         lambda: with_node(lambda n: n.retry.retry_delays_seconds.extend([1.0] * 1001)), "1000"),
        ("retry delays nan", INVALID,
         lambda: with_node(lambda n: n.retry.retry_delays_seconds.append(math.nan)), "finite"),
        ("retries", INVALID, lambda: with_node(lambda n: setattr(n.retry, "retries", 10_001)),
         "10000"),
        ("backoff", INVALID, lambda: with_node(lambda n: setattr(n.retry, "backoff", 1e9)),
         "backoff"),
        ("arg_name", INVALID, lambda: with_node(lambda n: setattr(n.args[0], "name", "a" * 257)),
         "256"),
        ("flow timeout", INVALID,
         lambda: spec_of(plain("t", x=1)).__class__(name="f", timeout_seconds=MAX_SECONDS * 2),
         "seconds"),
        ("nodes", EXHAUSTED,
         lambda: common_pb2.FlowSpec(name="f", nodes=[common_pb2.TaskNode(task_name="t")] * 100001),
         "100000"),
        ("literal_items", EXHAUSTED, lambda: spec_of(big_items), "1000000"),
    ]  # fmt: skip


SPEC_CASES = _spec_cases()


@pytest.mark.parametrize(
    ("what", "code", "make", "limit"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES]
)
async def test_submission_over_a_bound_is_refused_naming_it(what, code, make, limit):
    async with coordinator() as co:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.submit(make())
        assert err.value.code() == code, err.value.details()
        assert limit in err.value.details()
        runs = await co.c.ListFlowRuns(cs.ListFlowRunsRequest(), timeout=5)
        assert not runs.flow_runs  # nothing of a refused submission is kept


async def test_idempotency_key_bound():
    async with coordinator() as co:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.submit(spec_of(plain("t", x=1)), key="k" * 257)
        assert err.value.code() == INVALID and "idempotency_key" in err.value.details()


def _register(**kw):
    kw.setdefault("worker_id", "w")
    kw.setdefault("capacity", common_pb2.Resources(amounts={"cpu": 4}))
    kw.setdefault("task_names", ["t"])
    return ws.RegisterWorkerRequest(**kw)


REGISTER_CASES = [
    ("empty id", INVALID, _register(worker_id=""), "worker_id"),
    ("long id", INVALID, _register(worker_id="w" * 129), "128"),
    ("cpu claim", INVALID, _register(capacity=common_pb2.Resources(amounts={"cpu": 1e6})), "4096"),
    ("memory inf", INVALID,
     _register(capacity=common_pb2.Resources(amounts={"memory": math.inf})), "finite"),
    ("custom", INVALID, _register(capacity=common_pb2.Resources(amounts={"gpu": 1e7})),
     "worker_custom"),
    ("negative", INVALID, _register(capacity=common_pb2.Resources(amounts={"cpu": -1})), ">= 0"),
    ("hostname", INVALID, _register(hostname="h" * 256), "255"),
    ("task names", EXHAUSTED, _register(task_names=["t"] * 10_001), "10000"),
    ("pools", EXHAUSTED, _register(pools=[f"p{i}" for i in range(33)]), "32"),
    ("held", EXHAUSTED, _register(running=[ws.HeldTaskRun(task_run_id=1)] * 100_001), "100000"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "code", "request_", "limit"), REGISTER_CASES,
                         ids=[c[0] for c in REGISTER_CASES])  # fmt: skip
async def test_worker_claims_over_a_bound_are_refused(what, code, request_, limit):
    async with coordinator() as co:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.w.RegisterWorker(request_, timeout=5)
        assert err.value.code() == code, err.value.details()
        assert limit in err.value.details()
        assert not co.rt.core.workers


def test_gpu_memory_is_bounded_like_memory():
    from fleetflow_coordinator.bounds import check_request

    h200 = {"cpu": 16, "memory": 2**37, "gpu": 8, "gpu_memory": 8 * 141e9}
    check_request(_register(capacity=common_pb2.Resources(amounts=h200)))
    with pytest.raises(Exception, match="worker_memory"):
        check_request(_register(capacity=common_pb2.Resources(amounts={"gpu_memory": 2.0**51})))


async def test_small_requests_have_a_size_limit():
    async with coordinator() as co:
        huge = ws.HeartbeatRequest(
            worker_id="w", running=[ws.HeldTaskRun(task_run_id=2**60, attempt=2**31)] * 400_000
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.w.Heartbeat(huge, timeout=10)
        assert err.value.code() == EXHAUSTED
        assert "4194304 bytes" in err.value.details() and "Heartbeat" in err.value.details()


async def test_too_many_outcomes_are_refused_so_the_worker_splits_them():
    async with coordinator() as co:
        await co.register("w", ["t"])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.report("w", *[ws.Outcome(task_run_id=1, attempt=1)] * 10_001)
        assert err.value.code() == EXHAUSTED and "outcomes" in err.value.details()


async def test_measured_numbers_are_clamped_not_refused():
    async with coordinator() as co:
        await co.register("w", ["t"])
        await co.submit(spec_of(mapnode("t", x=("items", list(range(20))))))
        leases = (await co.lease("w", 2)).leases
        # 5e-324 s once made batch sizing overflow for every worker (issue #11)
        outcomes = [
            ws.Outcome(task_run_id=lease.task_run_id, attempt=lease.attempt,
                       value=pickle.dumps(1), duration_seconds=d, cpu_seconds=math.nan,
                       peak_memory_bytes=-5.0)
            for lease, d in zip(leases, (5e-324, math.inf), strict=True)
        ]  # fmt: skip
        acks = (await co.report("w", *outcomes)).acks
        assert list(acks) == [ws.OUTCOME_ACK_ACCEPTED] * 2
        node = co.rt.core.flows[next(iter(co.rt.core.flows))].nodes[0]
        assert node.mean_duration_s == pytest.approx(1e-6)
        more = (
            await co.w.LeaseTasks(
                ws.LeaseTasksRequest(worker_id="w", max_task_runs=2**31, max_batch=2**31,
                                     wait_seconds=math.nan),
                timeout=5,
            )
        ).leases  # fmt: skip
        assert 0 < len(more) <= 18
        await co.w.Heartbeat(
            ws.HeartbeatRequest(worker_id="w", cpu_percent=1e9, memory_available=-1), timeout=5
        )
        [info] = (await co.c.ListWorkers(cs.ListWorkersRequest(), timeout=5)).workers
        assert info.cpu_percent == 100.0 and info.memory_available == 0.0


async def test_a_retry_delay_is_clamped_and_error_text_cut():
    async with coordinator() as co:
        await co.register("w", ["t"])
        node = plain("t", x=1)
        node.retry.retries = 1
        flow_id = (await co.submit(spec_of(node, output_node=0))).flow_run_id
        [lease] = (await co.lease("w", 1)).leases
        error = common_pb2.TaskError(
            type="Boom", message="m" * 1_000_000, traceback="t" * 1_000_000,
            pickled=b"p" * (2 << 20), log_tail=["l" * 10_000] * 50,
        )  # fmt: skip
        outcome = ws.Outcome(
            task_run_id=lease.task_run_id, attempt=lease.attempt, error=error,
            retry_requested=True, retry_delay_seconds=1e300,
        )  # fmt: skip
        assert list((await co.report("w", outcome)).acks) == [ws.OUTCOME_ACK_ACCEPTED]
        flow = co.rt.core.flows[flow_id]
        retrying = [e for e in flow.events if e.retry_at]
        assert retrying and retrying[-1].retry_at <= co.rt.clock() + MAX_SECONDS + 1
        got = await co.c.GetTaskRun(cs.GetTaskRunRequest(task_run_id=lease.task_run_id), timeout=5)
        stored = got.attempts[0].error
        assert len(stored.message) == 256 * 1024 and len(stored.traceback) == 256 * 1024
        assert stored.pickled == b"" and len(stored.log_tail) == 20
        assert all(len(line) == 4096 for line in stored.log_tail)


async def test_prune_age_and_limit_tag_are_checked():
    async with coordinator() as co:
        for bad in (-1.0, math.nan):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await co.c.PruneFlowRuns(cs.PruneFlowRunsRequest(older_than_seconds=bad), timeout=5)
            assert err.value.code() == INVALID and "older_than_seconds" in err.value.details()
        for tag in ("", "t" * 129):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await co.c.SetConcurrencyLimit(cs.SetConcurrencyLimitRequest(tag=tag), timeout=5)
            assert err.value.code() == INVALID and "tag" in err.value.details()
