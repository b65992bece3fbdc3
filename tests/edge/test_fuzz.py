"""Hypothesis fuzzing of every RPC of a real, authenticated coordinator.

Each RPC of the three services (CoordinatorService, WorkerService and
TransferService; the client stream WriteObject and the bidirectional stream
WorkerSession get 1 to 3 messages per call)
gets a few hundred requests: random messages built from the request
type's descriptor (NaN and huge numbers, long and control-character strings,
odd enums, nested lists) and random bytes. No answer may be UNKNOWN, INTERNAL or
a timeout; nothing is logged at ERROR; and afterwards a normal flow completes.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys

import grpc
import pytest
from fleetflow import Client
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.loader import load_module
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.fleet import FLOWS, ROOT, _env, wait_until

from .secure import make_pki

flows = load_module(str(FLOWS))

pytestmark = pytest.mark.slow

EXAMPLES = 200
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}

_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 5e-324, 1e308, 2.0**60, 1e-7, 0.5]),
)
_INTS = {
    F.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    F.TYPE_UINT32: st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 3)),
    F.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    F.TYPE_UINT64: st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 3)),
}
_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["", "t", "default", "cpu", "memory", "gpu", "x" * 129, "w", "runs/f/1.1.r", "submit/s/a"]
    ),
    st.text(alphabet=string.printable, min_size=200, max_size=700),
)


def _scalar(field):
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return _FLOATS
    if field.type in _INTS:
        return _INTS[field.type]
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return _TEXT
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=32)
    if field.type == F.TYPE_ENUM:
        return st.integers(-3, 30)
    raise AssertionError(field.type)


def messages(descriptor, depth: int = 0):
    """Random messages of ``descriptor``'s type, nested at most 3 deep."""
    parts = {}
    for field in descriptor.fields:
        if field.type == F.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key, value = field.message_type.fields
                values = (
                    messages(value.message_type, depth + 1)
                    if value.type == F.TYPE_MESSAGE
                    else _scalar(value)
                )
                strategy = st.dictionaries(_scalar(key), values, max_size=4)
            elif depth >= 3:
                continue
            else:
                strategy = messages(field.message_type, depth + 1)
                if field.is_repeated:
                    strategy = st.lists(strategy, max_size=3)
        else:
            strategy = _scalar(field)
            if field.is_repeated:
                strategy = st.lists(strategy, max_size=5)
        parts[field.name] = strategy

    def build(values):
        from google.protobuf import message_factory

        message = message_factory.GetMessageClass(descriptor)()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
                if field.message_type.fields[1].type == F.TYPE_MESSAGE:
                    for k, v in value.items():
                        target[k].CopyFrom(v)
                else:
                    target.update(value)
            elif field.is_repeated:
                target.extend(value)
            elif field.type == F.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=parts).map(build)


def _methods():
    """``(path, request descriptor, kind)`` of every RPC: unary, server, client or bidi."""
    out = []
    for module in (cs, ws, ts):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kind = (
                    "bidi"
                    if m.client_streaming and m.server_streaming
                    else "client"
                    if m.client_streaming
                    else "server"
                    if m.server_streaming
                    else "unary"
                )
                out.append((f"/{service.full_name}/{m.name}", m.input_type, kind))
    return out


METHODS = _methods()


def test_every_rpc_of_the_three_services_is_fuzzed():
    from .test_error_table import METHODS as EVERY_RPC

    assert {m for m, *_ in METHODS} == {m for m, _ in EVERY_RPC}
    assert [m for m, _, kind in METHODS if kind == "client"] == [
        "/fleetflow.api.v1.TransferService/WriteObject"
    ]
    assert [m for m, _, kind in METHODS if kind == "bidi"] == [
        "/fleetflow.api.v1.WorkerService/WorkerSession"
    ]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A real coordinator with TLS and tokens, and an admin channel to it."""
    tmp = tmp_path_factory.mktemp("fuzz")
    pki = make_pki(tmp)
    port_file = tmp / "port"
    log_path = tmp / "coordinator.log"
    env = {**_env(), "FLEETFLOW_LEASE_WAIT_MAX_S": "0.05", "FLEETFLOW_LEASE_TTL_S": "3"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0",
             "--port-file", str(port_file), "--db", str(tmp / "ff.db"), "--http", "off",
             "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
             "--auth-file", str(pki.auth_file), "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, 30, what="start")
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        with pki.credentials("admin").channel(address) as channel:
            yield pki, address, channel, log_path, proc
    finally:
        proc.terminate()
        proc.wait(15)


def _call(channel, method: str, raw: bytes | list[bytes], kind: str, metadata=None):
    try:
        if kind == "server":
            for _ in channel.unary_stream(method)(raw, timeout=10, metadata=metadata):
                pass
        elif kind == "client":
            channel.stream_unary(method)(iter(raw), timeout=10, metadata=metadata)
        elif kind == "bidi":  # every message sent, then half-closed: it must end by itself
            for _ in channel.stream_stream(method)(iter(raw), timeout=10, metadata=metadata):
                pass
        else:
            channel.unary_unary(method)(raw, timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(("method", "descriptor", "kind"), METHODS,
                         ids=[m[0].rpartition("/")[2] for m in METHODS])  # fmt: skip
def test_fuzz_every_rpc(secured, method, descriptor, kind):
    _, _, channel, _, proc = secured
    one = st.one_of(messages(descriptor).map(lambda m: m.SerializeToString()),
                    st.binary(max_size=96))  # fmt: skip

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(one, min_size=1, max_size=3) if kind in ("client", "bidi") else one)
    def fuzz(raw: bytes | list[bytes]) -> None:
        code, details = _call(channel, method, raw, kind)
        assert code not in BAD, f"{method}: {code.name} {details}"

    fuzz()
    assert proc.poll() is None


def test_fuzz_credentials(secured):
    _, _, channel, _, _ = secured
    method = "/fleetflow.api.v1.CoordinatorService/ListFlowRuns"
    request = cs.ListFlowRunsRequest().SerializeToString()

    header = st.text(alphabet=string.ascii_letters + string.digits + "-._~+/= :", max_size=100)

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(st.one_of(header, header.map("Bearer {}".format), header.map("Basic {}".format))
           .map(str.strip))  # fmt: skip
    def fuzz(value: str) -> None:
        # call credentials add the admin token; this one comes first and decides
        code, _ = _call(channel, method, request, "unary", metadata=(("authorization", value),))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    fuzz()


def test_after_the_fuzzing_nothing_was_logged_as_an_error_and_a_flow_completes(secured):
    pki, address, _, log_path, proc = secured
    worker = subprocess.Popen(
        [sys.executable, "-m", "fleetflow_worker", "--coordinator", address, "--module",
         str(FLOWS), "--cpu", "1", "--tls-ca", str(pki.ca)],
        cwd=ROOT, env={**_env(), "FLEETFLOW_TOKEN": pki.tokens["worker"]},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with Client(address, credentials=pki.credentials("client")) as client:
            assert client.submit(flows.map_inc, n=5).result(timeout=60) == [1, 2, 3, 4, 5]
    finally:
        worker.terminate()
        worker.wait(30)
    assert proc.poll() is None
    errors = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # gRPC's own C-level lines
        if entry.get("level") in ("error", "critical"):
            errors.append(entry)
    assert not errors, errors[:3]
