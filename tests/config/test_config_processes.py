"""Real coordinator, worker and CLI processes configured by a fleetflow.toml alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests" / "worker" / "sample_tasks.py"


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    for name in list(out):
        if name.startswith("FLEETFLOW_"):
            del out[name]
    paths = [str(ROOT / p) for p in ("client", "coordinator", "worker")]
    out["PYTHONPATH"] = os.pathsep.join(paths + [out.get("PYTHONPATH", "")])
    out["COLUMNS"] = "200"
    out.update(extra)
    return out


def start(args: list[str], cwd: Path, log: Path, **extra: str) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env(**extra),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> str:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{path} not written in {timeout} s: {log.read_text()[-3000:]}")


def test_a_nan_lease_ttl_from_the_environment_is_refused_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fleetflow_coordinator", "--db", ":memory:", "--http", "off"],
        cwd=tmp_path,
        env=env(FLEETFLOW_LEASE_TTL_S="nan"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "FLEETFLOW_LEASE_TTL_S='nan': lease_ttl_s must be a finite number" in done.stderr


def test_a_bad_file_key_is_refused_at_start_naming_file_and_key(tmp_path):
    (tmp_path / "fleetflow.toml").write_text('[coordinator]\nlease_ttl_s = "10s"\n')
    done = subprocess.run(
        [sys.executable, "-m", "fleetflow_coordinator", "--db", ":memory:"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "fleetflow.toml: coordinator.lease_ttl_s" in done.stderr
    assert "expected a number, got '10s' (string)" in done.stderr


@pytest.mark.slow
def test_coordinator_worker_and_cli_take_their_settings_from_the_file(tmp_path):
    """One file configures all three processes; a flag still wins over it."""
    (tmp_path / "fleetflow.toml").write_text(
        "[coordinator]\n"
        'listen = "127.0.0.1:0"\n'
        'port_file = "coordinator.port"\n'
        'db = ":memory:"\n'
        'http = "off"\n'
        "lease_ttl_s = 7\n"
        "[worker]\n"
        "cpu = 1\n"
        'memory = "512Mi"\n'
        'worker_id = "from-the-file"\n'
        "resources = { licence = 2 }\n"
        "[client]\n"
        'coordinator = "127.0.0.1:1"\n'  # replaced below, once the port is known
    )
    log = tmp_path / "fleet.log"
    coordinator = start(["-m", "fleetflow_coordinator"], tmp_path, log)
    worker = None
    try:
        port = wait_for_file(tmp_path / "coordinator.port", coordinator, log)
        text = (tmp_path / "fleetflow.toml").read_text().replace("127.0.0.1:1", f"127.0.0.1:{port}")
        (tmp_path / "fleetflow.toml").write_text(
            text.replace("[worker]\n", f'[worker]\ncoordinator = "127.0.0.1:{port}"\n')
        )
        worker = start(
            ["-m", "fleetflow_worker", "--module", str(TASKS), "--max-concurrency", "3"],
            tmp_path,
            log,
        )
        rows: list = []
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up and not rows:
            done = subprocess.run(
                [sys.executable, "-m", "fleetflow.cli", "workers", "--json"],
                cwd=tmp_path,
                env=env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
            rows = json.loads(done.stdout)
            if not rows:
                assert worker.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
        assert len(rows) == 1, log.read_text()[-3000:]
        assert rows[0]["worker_id"] == "from-the-file"
        assert rows[0]["capacity"] == {"cpu": 1.0, "memory": 512 * 2.0**20, "licence": 2.0}
    finally:
        if worker is not None:
            stop(worker)
        stop(coordinator)


def test_the_cli_reaches_a_tls_coordinator_with_credentials_from_the_file(tmp_path):
    """[client] tls_ca and token_file: the same schema as --tls-ca and --token-file."""
    pki = tmp_path / "pki"
    for args in (
        ["certs", str(pki)],
        ["token", "client", "me", "--auth-file", str(pki / "auth.toml"), "--out", str(pki / "me")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "fleetflow.cli", *args],
            env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    log = tmp_path / "coordinator.log"
    coordinator = start(
        ["-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0", "--port-file", "port",
         "--db", ":memory:", "--http", "off", "--tls-cert", str(pki / "coordinator.pem"),
         "--tls-key", str(pki / "coordinator-key.pem"), "--auth-file", str(pki / "auth.toml")],
        tmp_path, log,
    )  # fmt: skip
    try:
        port = wait_for_file(tmp_path / "port", coordinator, log)
        project = tmp_path / "project"
        project.mkdir()
        (project / "fleetflow.toml").write_text(
            f'[client]\ncoordinator = "127.0.0.1:{port}"\n'
            f'tls_ca = "{pki / "ca.pem"}"\ntoken_file = "{pki / "me"}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "fleetflow.cli", "flow-runs", "--json"],
            cwd=project, env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + log.read_text()[-2000:]
        assert json.loads(done.stdout) == []
        # without the token the same call is refused: the file's token was what let it in
        (project / "fleetflow.toml").write_text(
            f'[client]\ncoordinator = "127.0.0.1:{port}"\ntls_ca = "{pki / "ca.pem"}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "fleetflow.cli", "flow-runs", "--json"],
            cwd=project, env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
    finally:
        stop(coordinator)
