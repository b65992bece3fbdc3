"""compose.yaml parses, and every command in it is a real fleetflow CLI command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _services():
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(data["services"]) == {"coordinator", "worker"}
    return data["services"]


def test_compose_file_parses_and_builds_the_repo_dockerfile():
    services = _services()
    assert services["coordinator"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert services["worker"]["depends_on"]["coordinator"]["condition"] == "service_healthy"


def test_compose_commands_are_real_cli_commands():
    for name, service in _services().items():
        command = service["command"]
        assert command[0] == "fleetflow", name
        # Ask the real CLI to parse the same arguments (--help stops before running).
        args = [a for a in command[1:]]
        result = subprocess.run(
            [sys.executable, "-m", "fleetflow.cli", *args[:1], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, (name, result.stderr)
        for option in [a for a in args if a.startswith("--")]:
            assert option in result.stdout, f"{name}: {option} is not an option of {args[0]}"


def test_compose_healthcheck_uses_the_grpc_health_service():
    check = " ".join(_services()["coordinator"]["healthcheck"]["test"])
    assert "grpc_health.v1" in check and "Check(" in check


def test_compose_runs_the_fleet_with_tls_and_tokens_from_mounted_secrets():
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = data["services"]
    coordinator = services["coordinator"]["command"]
    worker = services["worker"]["command"]

    def value(command, option):
        return command[command.index(option) + 1]

    for option in ("--tls-cert", "--tls-key", "--auth-file"):
        assert value(coordinator, option).startswith("/run/secrets/"), option
    for option in ("--tls-ca", "--token-file"):
        assert value(worker, option).startswith("/run/secrets/"), option
    mounted = set(services["coordinator"]["secrets"]) | set(services["worker"]["secrets"])
    paths = {value(c, o) for c, o in [(coordinator, "--tls-cert"), (coordinator, "--tls-key"),
                                      (coordinator, "--auth-file"), (worker, "--tls-ca"),
                                      (worker, "--token-file")]}  # fmt: skip
    assert {p.removeprefix("/run/secrets/") for p in paths} <= mounted
    # secrets come from files on the host at run time, never from the image
    assert all("file" in s for s in data["secrets"].values())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pki" not in dockerfile and "token" not in dockerfile.lower()
    assert "pki/" in (ROOT / ".dockerignore").read_text().split()
    assert "/run/secrets/ca" in " ".join(services["coordinator"]["healthcheck"]["test"])


def _seconds(text: str) -> float:
    assert text.endswith("s"), text
    return float(text[:-1])


def test_compose_keeps_the_database_on_a_volume():
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    coordinator = data["services"]["coordinator"]
    command = coordinator["command"]
    db = command[command.index("--db") + 1]
    (mount,) = coordinator["volumes"]
    volume, _, path = mount.partition(":")
    assert volume in data["volumes"] and Path(db).parent == Path(path)


def test_compose_stop_grace_covers_the_worker_drain():
    from fleetflow_worker.settings import WorkerSettings

    services = _services()
    worker = services["worker"]
    command = worker["command"]
    drain = float(command[command.index("--drain-grace") + 1])
    flush = WorkerSettings.__dataclass_fields__["flush_timeout_s"].default
    assert _seconds(worker["stop_grace_period"]) >= drain + flush
    assert _seconds(services["coordinator"]["stop_grace_period"]) >= 10
