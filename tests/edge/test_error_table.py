"""One error table, one interceptor: every refusal has its code, nothing a peer sends is UNKNOWN."""

from __future__ import annotations

import ast
import pathlib

import grpc
import pytest
import structlog
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_coordinator import errors
from fleetflow_coordinator.core import InvalidFlowSpec
from fleetflow_coordinator.store import MemoryStore, StoreError
from google.protobuf.message import DecodeError

from tests.review.helpers import plain, spec_of
from tests.review.rpc import coordinator

SERVICERS = pathlib.Path(errors.__file__).with_name("servicers.py")
TRANSFER = pathlib.Path(errors.__file__).with_name("transfer.py")


def _methods():
    """(full method name, "bidi" / True / False) for every RPC of the fleetflow services.

    True: a server stream; "bidi": a bidirectional stream; False: one answer.
    """
    out = []
    for module in (cs, ws, ts):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kind = "bidi" if m.client_streaming and m.server_streaming else m.server_streaming
                out.append((f"/{service.full_name}/{m.name}", kind))
    return out


METHODS = _methods()


def test_every_rpc_is_listed():
    # 14 client-facing, 6 worker-facing, 4 of the result store: a new RPC joins these tests
    assert len(METHODS) == 24


def test_servicers_never_pick_a_status_code():
    for path in (SERVICERS, TRANSFER):
        tree = ast.parse(path.read_text())
        picked = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("abort", "set_code", "StatusCode")
        ]
        assert picked == [], f"{path.name} picks status codes itself at lines {picked}"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidRequest("x: bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidFlowSpec("nodes[0]: bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (DecodeError("truncated"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no flow run"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("worker_id"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.LimitExceeded("nodes: 10 > 5"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("role"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable("standby"), grpc.StatusCode.UNAVAILABLE),
        (errors.Unimplemented("off"), grpc.StatusCode.UNIMPLEMENTED),
        (StoreError("disk full"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_table_maps_each_refusal(exc, code):
    assert errors.status_for(exc)[0] == code


def test_anything_else_is_a_bug():
    assert errors.status_for(KeyError("x")) is None
    assert errors.status_for(OverflowError()) is None


@pytest.mark.parametrize(("method", "stream"), METHODS, ids=[m for m, _ in METHODS])
async def test_garbage_bytes_are_invalid_argument(method, stream):
    async with coordinator() as co:
        if stream == "bidi":
            call = co.channel.stream_stream(method)(timeout=5)
            await call.write(b"\xff\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
        elif stream:
            call = co.channel.unary_stream(method)(b"\xff\xff\xff\xff", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
        else:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await co.channel.unary_unary(method)(b"\xff\xff\xff\xff", timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "not a valid protocol message" in err.value.details()


class _FailingStore(MemoryStore):
    def write(self, batch) -> None:
        raise StoreError("disk full (injected)")


async def test_store_failure_is_unavailable():
    async with coordinator(store=_FailingStore()) as co:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.submit(spec_of(plain("t", x=1), output_node=0))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "disk full (injected)" in err.value.details()


async def test_a_bug_is_internal_and_logged_once_with_its_traceback():
    async with coordinator() as co:

        def broken():
            raise KeyError("stale entry")

        co.rt.core.demand = broken
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await co.c.GetDemand(cs.GetDemandRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "KeyError" in err.value.details()
        internal = [e for e in logs if e["event"] == "rpc_internal_error"]
        assert len(internal) == 1
        assert internal[0]["method"].endswith("/GetDemand")
        assert isinstance(internal[0]["exc_info"], KeyError)
        # the coordinator serves on
        await co.c.ListFlowRuns(cs.ListFlowRunsRequest(), timeout=5)


async def test_not_found_and_already_exists_keep_their_codes():
    async with coordinator() as co:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.get("nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await co.register("w", ["t"], hostname="a", pid=1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.register("w", ["t"], hostname="b", pid=2)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_long_message_is_cut_to_fit_trailing_metadata():
    async with coordinator() as co:

        def long_refusal():
            raise errors.InvalidRequest("x" * 100_000)

        co.rt.core.demand = long_refusal
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await co.c.GetDemand(cs.GetDemandRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert 100 < len(err.value.details()) <= 1024
