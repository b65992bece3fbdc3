"""Every RPC under every role: allowed calls get through, others are refused before any handler."""

from __future__ import annotations

import asyncio
import pickle
import re
from pathlib import Path

import grpc
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.api.v1 import worker_service_pb2_grpc as ws_grpc
from fleetflow.credentials import Credentials
from fleetflow_coordinator import servicers, transfer
from fleetflow_coordinator.auth import METHOD_ROLES, ROLES

from tests.review.helpers import plain, spec_of

from .secure import make_pki, secure_coordinator
from .test_error_table import METHODS

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("roles"))


def _request(method: str, who: str):
    """A small valid request for ``method``; worker calls name the caller's own worker."""
    name = method.rpartition("/")[2]
    worker = f"w-{who}"
    return {
        "SubmitFlowRun": lambda: cs.SubmitFlowRunRequest(spec=spec_of(plain("t", x=1))),
        "GetFlowRun": lambda: cs.GetFlowRunRequest(flow_run_id="nope"),
        "ListFlowRuns": cs.ListFlowRunsRequest,
        "WatchFlowRun": lambda: cs.WatchFlowRunRequest(flow_run_id="nope"),
        "PruneFlowRuns": lambda: cs.PruneFlowRunsRequest(older_than_seconds=1e6),
        "CancelFlowRun": lambda: cs.CancelFlowRunRequest(flow_run_id="nope"),
        "CancelTaskRun": lambda: cs.CancelTaskRunRequest(task_run_id=10**9),
        "GetTaskRun": lambda: cs.GetTaskRunRequest(task_run_id=10**9),
        "SetConcurrencyLimit": lambda: cs.SetConcurrencyLimitRequest(tag="x", limit=-1),
        "GetDemand": cs.GetDemandRequest,
        "ListWorkers": cs.ListWorkersRequest,
        "GetFlowRunStats": lambda: cs.GetFlowRunStatsRequest(flow_run_id="nope"),
        "ListTaskRuns": lambda: cs.ListTaskRunsRequest(flow_run_id="nope"),
        "ListConcurrencyLimits": cs.ListConcurrencyLimitsRequest,
        "RegisterWorker": lambda: ws.RegisterWorkerRequest(
            worker_id=worker, capacity=common_pb2.Resources(amounts={"cpu": 1}), task_names=["t"]
        ),
        "Heartbeat": lambda: ws.HeartbeatRequest(worker_id=worker),
        "LeaseTasks": lambda: ws.LeaseTasksRequest(worker_id=worker, max_task_runs=1),
        "ReportOutcomes": lambda: ws.ReportOutcomesRequest(worker_id=worker),
        "ReleaseLeases": lambda: ws.ReleaseLeasesRequest(worker_id=worker),
        "WorkerSession": lambda: ws.WorkerUp(
            id=1, lease_tasks=ws.LeaseTasksRequest(worker_id=worker, max_task_runs=1)
        ),
        "GetStoreInfo": ts.GetStoreInfoRequest,
        "WriteObject": lambda: ts.WriteObjectRequest(key="runs/x/y", last=True, checksum=b"0"),
        "ReadObject": lambda: ts.ReadObjectRequest(key="runs/x/y"),
        "ReadNodeValues": lambda: ts.ReadNodeValuesRequest(flow_run_id="nope"),
    }[name]()


async def _call(channel: grpc.aio.Channel, method: str, request, stream, metadata=()):
    """Make one call; return its status code (OK when it succeeded).

    ``metadata``: the token for a bidirectional stream, which the asyncio
    channel's interceptors do not add (the worker sends it the same way).
    """
    try:
        if stream == "bidi":  # one message, half-closed: answered, then the stream ends
            call = channel.stream_stream(method, request_serializer=type(request).SerializeToString)
            async for _ in call(iter([request]), timeout=5, metadata=metadata or None):
                pass
        elif stream:
            call = channel.unary_stream(method, request_serializer=type(request).SerializeToString)
            async for _ in call(request, timeout=5):
                pass
        else:
            call = channel.unary_unary(method, request_serializer=type(request).SerializeToString)
            await call(request, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def entered(monkeypatch):
    """Count entries into every servicer method (the handlers themselves)."""
    counts: dict[str, int] = {}
    for cls in (servicers.CoordinatorServicer, servicers.WorkerServicer, transfer.TransferServicer):
        for method, _ in METHODS:
            name = method.rpartition("/")[2]
            if name not in vars(cls):
                continue  # the other service's method
            original = vars(cls)[name]

            def spy(self, request, context, _original=original, _name=name):
                counts[_name] = counts.get(_name, 0) + 1
                return _original(self, request, context)

            monkeypatch.setattr(cls, name, spy)
    return counts


def test_the_table_covers_every_rpc_and_only_known_roles():
    assert set(METHOD_ROLES) == {m for m, _ in METHODS}
    assert all(roles and roles <= set(ROLES) for roles in METHOD_ROLES.values())
    assert all("admin" in roles for roles in METHOD_ROLES.values())


async def test_every_rpc_under_every_credential(pki, entered):
    callers = [*ROLES, "stranger", None]  # None: no credential at all
    async with secure_coordinator(pki) as (_, address):
        for who in callers:
            credentials = pki.credentials(who) if who else Credentials(tls_ca=str(pki.ca))
            async with credentials.aio_channel(address) as channel:
                for method, stream in METHODS:
                    name = method.rpartition("/")[2]
                    before = entered.get(name, 0)
                    code = await _call(channel, method, _request(method, str(who)), stream,
                                       credentials.call_metadata())  # fmt: skip
                    allowed = who in ROLES and who in METHOD_ROLES[method]
                    if allowed:
                        assert code not in (DENIED, UNAUTHENTICATED), (who, name, code)
                        assert entered.get(name, 0) == before + 1, (who, name)
                    else:
                        want = DENIED if who in ROLES else UNAUTHENTICATED
                        assert code == want, (who, name, code)
                        assert entered.get(name, 0) == before, f"{name} ran for {who}"


async def test_worker_token_cannot_submit_and_client_token_cannot_lease(pki):
    async with secure_coordinator(pki) as (rt, address):
        async with pki.credentials("worker").aio_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cs_grpc.CoordinatorServiceStub(channel).SubmitFlowRun(
                    cs.SubmitFlowRunRequest(spec=spec_of(plain("t", x=1))), timeout=5
                )
            assert err.value.code() == DENIED
            assert "worker" in err.value.details() and "SubmitFlowRun" in err.value.details()
        async with pki.credentials("client").aio_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ws_grpc.WorkerServiceStub(channel).LeaseTasks(
                    ws.LeaseTasksRequest(worker_id="x", max_task_runs=1), timeout=5
                )
            assert err.value.code() == DENIED
        assert not rt.core.flows and not rt.core.workers
        refused = rt.metrics.credential_refused.labels("PERMISSION_DENIED")._value.get()
        assert refused == 2


async def test_client_certificates_identify_callers_with_mutual_tls(pki):
    async with secure_coordinator(pki, mutual=True) as (rt, address):
        async with pki.credentials(cert="worker").aio_channel(address) as channel:
            await ws_grpc.WorkerServiceStub(channel).RegisterWorker(
                _request("/x/RegisterWorker", "cert"), timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cs_grpc.CoordinatorServiceStub(channel).SubmitFlowRun(
                    cs.SubmitFlowRunRequest(spec=spec_of(plain("t", x=1))), timeout=5
                )
            assert err.value.code() == DENIED and "worker-cert" in err.value.details()
        async with pki.credentials(cert="client").aio_channel(address) as channel:
            submitted = await cs_grpc.CoordinatorServiceStub(channel).SubmitFlowRun(
                cs.SubmitFlowRunRequest(spec=spec_of(plain("t", x=1))), timeout=5
            )
            assert submitted.created
        # no client certificate: the TLS handshake itself fails
        async with pki.credentials("admin").aio_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cs_grpc.CoordinatorServiceStub(channel).ListFlowRuns(
                    cs.ListFlowRunsRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert set(rt.core.workers) == {"w-cert"}


async def test_mutual_tls_without_an_auth_file_trusts_the_ca(pki):
    async with secure_coordinator(pki, mutual=True, auth=False) as (rt, address):
        async with pki.credentials(cert="viewer").aio_channel(address) as channel:
            await ws_grpc.WorkerServiceStub(channel).RegisterWorker(
                _request("/x/RegisterWorker", "any"), timeout=5
            )
        assert set(rt.core.workers) == {"w-any"}


async def test_a_plain_channel_to_a_tls_port_fails_and_a_token_never_goes_plaintext_afar(pki):
    async with secure_coordinator(pki) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cs_grpc.CoordinatorServiceStub(channel).ListFlowRuns(
                    cs.ListFlowRunsRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="only over TLS"):
        Credentials(token=pki.tokens["client"]).aio_channel("10.0.0.1:50051")


async def test_a_worker_cannot_act_for_another_workers_id(pki):
    async with secure_coordinator(pki) as (rt, address):
        victim_ch = pki.credentials("worker").aio_channel(address)
        thief_ch = pki.credentials("worker2").aio_channel(address)
        victim = ws_grpc.WorkerServiceStub(victim_ch)
        thief = ws_grpc.WorkerServiceStub(thief_ch)
        client_ch = pki.credentials("client").aio_channel(address)
        try:
            register = ws.RegisterWorkerRequest(
                worker_id="victim", capacity=common_pb2.Resources(amounts={"cpu": 1}),
                task_names=["t"], hostname="h", pid=1,
            )  # fmt: skip
            await victim.RegisterWorker(register, timeout=5)
            flow_id = (
                await cs_grpc.CoordinatorServiceStub(client_ch).SubmitFlowRun(
                    cs.SubmitFlowRunRequest(spec=spec_of(plain("t", x=1), output_node=0)),
                    timeout=5,
                )
            ).flow_run_id
            [lease] = (
                await victim.LeaseTasks(
                    ws.LeaseTasksRequest(worker_id="victim", max_task_runs=1), timeout=5
                )
            ).leases
            held = ws.HeldTaskRun(task_run_id=lease.task_run_id, attempt=lease.attempt)
            forged = ws.Outcome(task_run_id=lease.task_run_id, attempt=lease.attempt,
                                value=pickle.dumps("forged"))  # fmt: skip
            attacks = {
                "Heartbeat": thief.Heartbeat(ws.HeartbeatRequest(worker_id="victim"), timeout=5),
                "LeaseTasks": thief.LeaseTasks(
                    ws.LeaseTasksRequest(worker_id="victim", max_task_runs=5), timeout=5
                ),
                "ReportOutcomes": thief.ReportOutcomes(
                    ws.ReportOutcomesRequest(worker_id="victim", outcomes=[forged]), timeout=5
                ),
                "ReleaseLeases": thief.ReleaseLeases(
                    ws.ReleaseLeasesRequest(worker_id="victim", released=[held]), timeout=5
                ),
                "RegisterWorker": thief.RegisterWorker(register, timeout=5),
            }
            for rpc, call in attacks.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == DENIED, rpc
                assert "registered with another credential" in err.value.details()
                assert rt.metrics.identity_refused.labels(rpc)._value.get() == 1
            # the victim's lease is untouched and its own outcome is accepted
            tr = rt.core.task_runs[lease.task_run_id]
            assert tr.worker_id == "victim" and tr.attempt == lease.attempt
            assert rt.core.workers["victim"].running
            honest = ws.Outcome(task_run_id=lease.task_run_id, attempt=lease.attempt,
                                value=pickle.dumps("honest"))  # fmt: skip
            acks = await victim.ReportOutcomes(
                ws.ReportOutcomesRequest(worker_id="victim", outcomes=[honest]), timeout=5
            )
            assert list(acks.acks) == [ws.OUTCOME_ACK_ACCEPTED]
            result = await cs_grpc.CoordinatorServiceStub(client_ch).GetFlowRun(
                cs.GetFlowRunRequest(flow_run_id=flow_id, include_result=True), timeout=5
            )
            assert pickle.loads(result.result.pickled) == "honest"
            # once the victim is gone, its id is free for another credential
            rt.core.lose_worker("victim", rt.clock(), "test")
            await thief.RegisterWorker(register, timeout=5)
        finally:
            for ch in (victim_ch, thief_ch, client_ch):
                await ch.close()


async def test_a_token_added_to_the_auth_file_works_without_a_restart(pki, tmp_path):
    import shutil

    from fleetflow_coordinator.auth import append_entry, new_token

    auth_file = tmp_path / "auth.toml"
    shutil.copy(pki.auth_file, auth_file)
    pki_copy = type(pki)(**{**pki.__dict__, "auth_file": auth_file})
    async with secure_coordinator(pki_copy) as (rt, address):
        token = new_token()
        credentials = Credentials(tls_ca=str(pki.ca), token=token)
        async with credentials.aio_channel(address) as channel:
            stub = cs_grpc.CoordinatorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListFlowRuns(cs.ListFlowRunsRequest(), timeout=5)
            assert err.value.code() == UNAUTHENTICATED
            append_entry(auth_file, roles=["viewer"], token=token, name="late")
            for _ in range(40):  # bounded: the file is checked at most once a second
                try:
                    await stub.ListFlowRuns(cs.ListFlowRunsRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == UNAUTHENTICATED
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the new token was not accepted within 4 s")


async def test_a_token_revoked_in_the_auth_file_ends_an_open_worker_session(pki, tmp_path):
    import shutil

    from fleetflow_coordinator.auth import append_entry, new_token

    auth_file = tmp_path / "auth.toml"
    shutil.copy(pki.auth_file, auth_file)
    pki_copy = type(pki)(**{**pki.__dict__, "auth_file": auth_file})
    token = new_token()
    append_entry(auth_file, roles=["worker"], token=token, name="revoked-later")
    async with secure_coordinator(pki_copy) as (rt, address):
        credentials = Credentials(tls_ca=str(pki.ca), token=token)
        async with credentials.aio_channel(address) as channel:
            stub = ws_grpc.WorkerServiceStub(channel)
            register = ws.RegisterWorkerRequest(
                worker_id="w", capacity=common_pb2.Resources(amounts={"cpu": 1}),
                task_names=["t"], hostname="h", pid=1,
            )  # fmt: skip
            await stub.RegisterWorker(register, timeout=5)
            call = stub.WorkerSession(metadata=credentials.call_metadata())
            ask = ws.LeaseTasksRequest(worker_id="w", max_task_runs=1)
            await call.write(ws.WorkerUp(id=1, lease_tasks=ask))
            async with asyncio.timeout(5):
                assert (await call.read()).id == 1
            shutil.copy(pki.auth_file, auth_file)  # the token is gone from the file
            await asyncio.sleep(1.2)  # the file is checked at most once a second
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async with asyncio.timeout(10):
                    for rid in range(2, 40):  # bounded: each ask is answered at once
                        await call.write(ws.WorkerUp(id=rid, lease_tasks=ask))
                        await call.read()
                        await asyncio.sleep(0.2)
            assert err.value.code() == UNAUTHENTICATED


async def test_both_ways_of_sending_a_token_work(pki):
    """aio_channel adds it by interceptor; channel_credentials() carries it as call credentials."""
    credentials = pki.credentials("viewer")
    async with secure_coordinator(pki) as (_, address):
        async with credentials.aio_channel(address) as channel:
            await cs_grpc.CoordinatorServiceStub(channel).ListWorkers(
                cs.ListWorkersRequest(), timeout=5
            )
        creds = credentials.channel_credentials(address)
        async with grpc.aio.secure_channel(address, creds) as channel:
            await cs_grpc.CoordinatorServiceStub(channel).ListWorkers(
                cs.ListWorkersRequest(), timeout=5
            )

        def blocking() -> None:  # the server runs on this test's loop: call from a thread
            with credentials.channel(address) as channel:
                stub = cs_grpc.CoordinatorServiceStub(channel)
                stub.ListWorkers(cs.ListWorkersRequest(), timeout=5)

        await asyncio.to_thread(blocking)


def test_the_threat_models_role_table_lists_what_each_role_may_call():
    """docs/architecture.md's role table matches METHOD_ROLES, row by row (no drift)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    table = doc.split("| role | may call | why |", 1)[1].split("\n\n", 1)[0]
    names = {m.rpartition("/")[2] for m in METHOD_ROLES}
    rows = {}
    for row in table.strip().splitlines()[1:]:
        role, calls = (cell.strip() for cell in row.strip("|").split("|")[:2])
        rows[role.strip("`")] = calls
    listed = {role: set(re.findall(r"`(\w+)`", calls)) & names for role, calls in rows.items()}
    if "every read" in rows["client"]:
        listed["client"] |= listed["viewer"]
    if "all of the above" in rows["admin"]:
        listed["admin"] |= set().union(*listed.values())
    for role in ROLES:
        want = {m.rpartition("/")[2] for m, roles in METHOD_ROLES.items() if role in roles}
        assert listed[role] == want, (role, listed[role] ^ want)
    assert not listed["no credential"]  # only the health service's Check
