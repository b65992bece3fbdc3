"""A secured fleet of real processes: TLS, tokens, refusals, safe defaults."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from fleetflow import Client, RPCError
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc
from fleetflow.loader import load_module

from tests.e2e.fleet import FLOWS, ROOT, Fleet, _env, fleetflow, wait_until

from .secure import make_pki

flows = load_module(str(FLOWS))

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def _readme_fleet_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A fleet on several machines", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("fleetflow ")]


def test_the_readmes_secured_fleet_commands_run_a_flow(tmp_path):
    """The README's commands, with machine A on loopback and small sizes."""
    commands = _readme_fleet_commands()
    assert [c[1] for c in commands] == ["certs", "token", "token", "coordinator", "worker", "run"]
    # One worker token per worker machine, named after it (identity is the credential).
    assert commands[1][2:4] == ["worker", "B"] and "pki/B.token" in commands[4]
    env = {**_env(), "COLUMNS": "200"}
    for key in [k for k in env if k.startswith("FLEETFLOW_")]:
        del env[key]
    port_file = tmp_path / "port"
    procs = []
    log = open(tmp_path / "coordinator.log", "wb")  # noqa: SIM115 - closed below

    def adapt(args: list[str], port: str = "") -> list[str]:
        out = []
        for arg in args[1:]:
            arg = arg.replace("A:50051", f"localhost:{port}")
            if arg == "A":
                arg = "localhost"
            if arg.startswith("examples/"):
                arg = str(ROOT / arg)
            out.append(arg)
        return [sys.executable, "-m", "fleetflow.cli", *out]

    try:
        for args in commands[:3]:
            subprocess.run(adapt(args), cwd=tmp_path, env=env, check=True, timeout=60,
                           capture_output=True)  # fmt: skip
        assert stat.S_IMODE((tmp_path / "pki" / "coordinator-key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "pki" / "auth.toml").stat().st_mode) == 0o600
        coordinator = adapt(commands[3])
        listen = coordinator.index("--listen")
        coordinator[listen + 1] = "127.0.0.1:0"
        coordinator += ["--port-file", str(port_file), "--http", "off", "--db", "ff.db"]
        procs.append(subprocess.Popen(coordinator, cwd=tmp_path, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))  # fmt: skip
        wait_until(port_file.exists, 30, what="the coordinator's port file")
        port = port_file.read_text().strip()
        worker = adapt(commands[4], port)
        worker[worker.index("--cpu") + 1] = "1"
        procs.append(subprocess.Popen(worker, cwd=tmp_path, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))  # fmt: skip
        root = Path(os.__file__).parent / "json"
        run = subprocess.run(
            [*adapt(commands[5], port), "--param", f"root={root}", "--output", "out.json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads((tmp_path / "out.json").read_text())
        assert summary["files"] == len([p for p in root.rglob("*.py")
                                        if "__pycache__" not in p.parts])  # fmt: skip
        assert stat.S_IMODE((tmp_path / "ff.db").stat().st_mode) == 0o600
        tokens = [(tmp_path / "pki" / n).read_text().strip() for n in ("B.token",
                                                                       "alice.token")]  # fmt: skip
        logged = (tmp_path / "coordinator.log").read_text() + run.stdout + run.stderr
        assert not any(t in logged for t in tokens), "a token was logged"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
        log.close()


def test_tokens_roles_and_identity_in_a_real_fleet(fleet, tmp_path):
    pki = make_pki(tmp_path)  # the CLI that makes these runs in the README test above
    token_file = tmp_path / "worker.token"
    token_file.write_text(pki.tokens["worker"])
    fleet.start_coordinator("--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                            "--auth-file", str(pki.auth_file))  # fmt: skip
    fleet.start_worker("--tls-ca", str(pki.ca), "--token-file", str(token_file))
    with Client(fleet.address, credentials=pki.credentials("client")) as client:
        assert client.submit(flows.map_inc, n=20).result(timeout=60) == list(range(1, 21))
    with Client(fleet.address, credentials=pki.credentials("viewer")) as viewer:
        assert len(viewer.list_flow_runs()) == 1
        with pytest.raises(RPCError) as err:
            viewer.submit(flows.map_inc, n=1)
        assert err.value.code == "PERMISSION_DENIED"
    with Client(fleet.address, credentials=pki.credentials(None)) as anonymous:
        with pytest.raises(RPCError) as err:
            anonymous.list_flow_runs()
        assert err.value.code == "UNAUTHENTICATED"
    with grpc.insecure_channel(fleet.address) as plaintext:  # a TLS port: no handshake
        with pytest.raises(grpc.RpcError) as err:
            cs_grpc.CoordinatorServiceStub(plaintext).ListFlowRuns(
                cs.ListFlowRunsRequest(), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # the CLI takes the same options
    client_token = tmp_path / "client.token"
    client_token.write_text(pki.tokens["client"])
    done = fleetflow("flow-runs", "--coordinator", fleet.address, "--json", "--tls-ca",
                     str(pki.ca), "--token-file", str(client_token))  # fmt: skip
    assert json.loads(done.stdout)[0]["state"] == "COMPLETED"


def _coordinator(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fleetflow_coordinator", "--db", ":memory:", *args],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "where",
    [
        ["--listen", "0.0.0.0:0", "--http", "off"],
        ["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"],
    ],
)
def test_serving_beyond_loopback_unprotected_refuses_to_start(tmp_path, where):
    proc = _coordinator(tmp_path, *where)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "refusing to start" in out and "--insecure" in out


def test_insecure_starts_beyond_loopback_and_warns(tmp_path):
    from tests.e2e.test_partition import Link

    link = Link.create()  # a veth pair into a namespace of our own (root only; else skip)
    try:
        port_file = tmp_path / "port"
        proc = _coordinator(tmp_path, "--listen", f"{link.host_ip}:0", "--http", "off",
                            "--port-file", str(port_file), "--insecure")  # fmt: skip
        try:
            wait_until(lambda: port_file.exists() or proc.poll() is not None, 30, what="start")
            assert port_file.exists(), proc.stdout.read() if proc.poll() is not None else ""
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
        warnings = [json.loads(line) for line in out.splitlines() if '"insecure"' in line]
        assert warnings and warnings[0]["level"] == "warning"
        assert re.search(str(link.host_ip), json.dumps(warnings[0]["exposed"]))
    finally:
        link.destroy()


def test_database_files_are_private_and_an_old_readable_one_is_made_so(fleet):
    db = fleet.tmp / "old.db"
    fleet.start_coordinator(db=str(db))
    with Client(fleet.address) as client:
        client.list_flow_runs()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert fleet.coordinator.stop() == 0
    os.chmod(db, 0o644)  # made by an older fleetflow
    fleet.start_coordinator(db=str(db))
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    wait_until(lambda: "db_file_mode_tightened" in fleet.coordinator.log(), 10, what="log")
