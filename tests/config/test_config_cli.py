"""`fleetflow config show`, `--config`/`--profile`, flow_runners and the README's file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fleetflow.cli import cli
from fleetflow.config import ConfigError, flow_runner_target, load_config
from fleetflow.settings import MASK, ClientSettings
from fleetflow_coordinator.settings import Settings
from fleetflow_worker.settings import WorkerSettings

from tests.e2e.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]

FILE = """
profile = "dev"

[coordinator]
lease_ttl_s = 12

[worker]
memory = "2Gi"

[[executors]]
name = "cluster"
type = "dask"
address = "tcp://10.0.0.5:8786"
options = { timeout = 30, token = "s3cret" }

[profiles.dev.client]
coordinator = "dev-host:50051"

[profiles.prod.client]
coordinator = "prod-host:50051"
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("FLEETFLOW_CONFIG", "FLEETFLOW_PROFILE", "FLEETFLOW_COORDINATOR"):
        # set, then delete: the test's end removes what `fleetflow --profile` sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    (tmp_path / "fleetflow.toml").write_text(FILE)
    return tmp_path


def show(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, [*args, "config", "show", "--json"], env=env)
    return result


def test_config_show_prints_values_sources_and_masks_secrets(project):
    result = show(env={"FLEETFLOW_HEARTBEAT_INTERVAL_S": "2"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    path = str(project / "fleetflow.toml")
    assert data["file"] == path and data["profile"] == "dev"
    assert data["profiles"] == ["dev", "prod"]
    assert data["coordinator"]["lease_ttl_s"] == {
        "value": 12.0,
        "source": f"file {path}: coordinator.lease_ttl_s",
    }
    assert data["coordinator"]["heartbeat_interval_s"] == {
        "value": 2.0,
        "source": "env FLEETFLOW_HEARTBEAT_INTERVAL_S",
    }
    assert data["coordinator"]["tick_interval_s"]["source"] == "default"
    assert data["worker"]["memory"]["value"] == 2.0**31
    assert data["client"]["coordinator"] == {
        "value": "dev-host:50051",
        "source": f"file {path}: profiles.dev.client.coordinator",
    }
    (executor,) = data["executors"]
    assert executor["options"] == {"timeout": 30, "token": MASK}
    assert "s3cret" not in result.output
    assert data["flow_runners"] == {"default": "local", "local_workers": None}


def test_profile_and_config_options_of_the_group(project, tmp_path_factory, monkeypatch):
    result = show("--profile", "prod")
    assert json.loads(result.output)["client"]["coordinator"]["value"] == "prod-host:50051"
    # set through the environment, so subcommands and embedded fleets see it too
    assert os.environ["FLEETFLOW_PROFILE"] == "prod"
    monkeypatch.delenv("FLEETFLOW_PROFILE")
    other = tmp_path_factory.mktemp("elsewhere") / "other.yaml"
    other.write_text("client:\n  coordinator: yaml-host:1\n")
    result = show("--config", str(other))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["file"] == str(other) and data["client"]["coordinator"]["value"] == "yaml-host:1"


def test_config_show_as_a_table(project):
    result = CliRunner().invoke(cli, ["config", "show"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "lease_ttl_s" in result.output and "coordinator.lease_ttl_s" in result.output
    assert "cluster" in result.output and "s3cret" not in result.output
    # each table says which section it is (rich once read "[worker]" as a markup tag)
    for section in ("[coordinator]", "[worker]", "[client]"):
        assert section in result.output, result.output


def test_config_show_refuses_a_bad_key_in_any_section(project):
    (project / "fleetflow.toml").write_text('[worker]\ncpu = "lots"\n')
    result = show()
    assert result.exit_code == 1
    assert "fleetflow.toml: worker.cpu" in result.output
    assert "expected a number, got 'lots' (string)" in result.output


def test_flow_runners_choose_where_run_goes(project):
    assert flow_runner_target() == (None, None)
    (project / "fleetflow.toml").write_text(
        FILE + '\n[flow_runners]\ndefault = "local"\n[flow_runners.local]\nworkers = 3\n'
    )
    assert flow_runner_target() == (None, 3)
    (project / "fleetflow.toml").write_text(FILE + '\n[flow_runners]\ndefault = "prod"\n')
    assert flow_runner_target() == ("prod-host:50051", None)
    # the environment still wins over the profile's file value
    assert flow_runner_target({"FLEETFLOW_COORDINATOR": "env-host:1"}) == ("env-host:1", None)
    (project / "fleetflow.toml").write_text(FILE + '\n[flow_runners]\ndefault = "staging"\n')
    with pytest.raises(ConfigError, match="no profile 'staging'"):
        flow_runner_target()


def test_the_readme_configuration_file_is_valid_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration file", 1)[1]
    (block,) = re.findall(r"```toml\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    path = tmp_path / "fleetflow.toml"
    path.write_text(block)
    config = load_config(path, environ={})
    assert Settings.load(environ={}, config=config).settings.lease_ttl_s == 10
    worker = WorkerSettings.load(environ={}, config=config).settings
    assert worker.capacity == {"cpu": 8.0, "memory": 16 * 2.0**30, "gpu": 1.0}
    assert ClientSettings.load(environ={}, config=config).settings.coordinator == (
        "127.0.0.1:50051"
    )
    assert [(e.name, e.type) for e in config.executors] == [("cluster", "dask")]
    assert config.flow_runner().default == "prod"
    assert flow_runner_target({"FLEETFLOW_CONFIG": str(path)}) == (
        "coordinator.internal:50051",
        None,
    )


@pytest.mark.slow
def test_run_sends_the_flow_run_where_flow_runners_say(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        address = fleet.start_coordinator(db=":memory:")
        fleet.start_worker(module=ROOT / "examples" / "squares.py", cpu=2)
        project = tmp_path / "project"
        project.mkdir()
        (project / "fleetflow.toml").write_text(
            f'[flow_runners]\ndefault = "team"\n[profiles.team.client]\ncoordinator = "{address}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETFLOW")}
        paths = [str(ROOT / p) for p in ("client", "coordinator", "worker")]
        env["PYTHONPATH"] = ":".join(paths)
        target = str(ROOT / "examples" / "squares.py") + ":squares"
        done = subprocess.run(
            [sys.executable, "-m", "fleetflow.cli", "run", target, "-p", "n=4"],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + fleet.logs()
        assert f"submitted to {address}" in done.stderr
        assert "embedded fleet" not in done.stderr
        assert "14" in done.stdout  # 0 + 1 + 4 + 9
    finally:
        fleet.stop()
