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
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert result.returncode == 0, (name, result.stderr)
        for option in [a for a in args if a.startswith("--")]:
            assert option in result.stdout, f"{name}: {option} is not an option of {args[0]}"


def test_compose_healthcheck_uses_the_grpc_health_service():
    check = " ".join(_services()["coordinator"]["healthcheck"]["test"])
    assert "grpc_health.v1" in check and "Check(" in check
