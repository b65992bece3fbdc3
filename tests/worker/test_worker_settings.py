from __future__ import annotations

import dataclasses
import math

import psutil
import pytest
from click.testing import CliRunner
from fleetflow.resources import InvalidResourceError
from fleetflow_worker import WorkerSettings, cli
from fleetflow_worker.capacity import (
    default_cpu,
    default_memory,
    parse_resource_option,
    parse_resource_options,
    sample_usage,
)


def test_defaults_come_from_the_machine():
    settings = WorkerSettings()
    assert settings.coordinator == "127.0.0.1:50051"
    assert settings.cpu == psutil.cpu_count(logical=True) == default_cpu()
    assert settings.memory == psutil.virtual_memory().total == default_memory()
    assert settings.max_concurrency == 1000
    assert settings.task_nice == 10
    assert settings.capacity == {"cpu": settings.cpu, "memory": settings.memory}
    assert settings.pool_size == math.ceil(settings.cpu)


def test_worker_ids_are_unique_and_name_the_host():
    import os
    import socket

    a, b = WorkerSettings().worker_id, WorkerSettings().worker_id
    assert a != b
    assert a.startswith(f"{socket.gethostname()}-{os.getpid()}-")


def test_capacity_includes_custom_resources():
    settings = WorkerSettings(cpu=0.5, memory=1e9, resources={"gpu": 2.0})
    assert settings.capacity == {"cpu": 0.5, "memory": 1e9, "gpu": 2.0}
    assert settings.pool_size == 1


def test_settings_are_frozen_and_keyword_only():
    settings = WorkerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cpu = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        WorkerSettings("127.0.0.1:1")  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpu": 0},
        {"cpu": float("nan")},
        {"memory": -1},
        {"max_concurrency": 0},
        {"coordinator": "localhost"},
        {"resources": {"cpu": 1.0}},
        {"resources": {"gpu": -1.0}},
        {"lease_wait_s": 0},
        {"drain_grace_s": -1},
        {"task_nice": -1},
        {"task_nice": 20},
        {"usage_sample_s": 0},
        {"memory_margin_fraction": -0.1},
        {"memory_margin_bytes": -1},
    ],
)
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        WorkerSettings(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpu=1", ("gpu", 1.0)),
        (" gpu = 2 ", ("gpu", 2.0)),
        ("license=500m", ("license", 0.5)),
        ("scratch=1Gi", ("scratch", 2.0**30)),
    ],
)
def test_parse_resource_option(text, expected):
    assert parse_resource_option(text) == expected


@pytest.mark.parametrize("text", ["gpu", "=1", "gpu=", "gpu=-1", "gpu=lots", "cpu=2", "memory=1G"])
def test_parse_resource_option_rejects(text):
    with pytest.raises(ValueError):
        parse_resource_option(text)


def test_parse_resource_option_errors_are_resource_errors():
    with pytest.raises(InvalidResourceError):
        parse_resource_option("gpu=x1")


def test_later_resource_option_wins():
    assert parse_resource_options(["gpu=1", "gpu=2", "fpga=1"]) == {"gpu": 2.0, "fpga": 1.0}


def test_sample_usage():
    usage = sample_usage()
    assert 0 <= usage.cpu_percent <= 100
    assert usage.memory_available > 0


# ------------------------------------------------------------------------ CLI


def invoke(*args: str):
    return CliRunner().invoke(cli.command, list(args))


def test_cli_needs_a_module():
    result = invoke()
    assert result.exit_code == 2
    assert "--module" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resource", "gpu"], "NAME=AMOUNT"),
        (["--resource", "cpu=2"], "use --cpu"),
        (["--memory", "lots"], "memory"),
        (["--cpu", "0"], "--cpu"),
        (["--max-concurrency", "0"], "--max-concurrency"),
    ],
)
def test_cli_rejects_bad_options(sample_tasks_path, args, message):
    result = invoke("--module", sample_tasks_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_reports_a_module_without_tasks(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    empty = tmp_path / "no_tasks_here.py"
    empty.write_text("X = 1\n")
    result = invoke("--module", str(empty))
    assert result.exit_code == 1
    assert "no fleetflow tasks" in result.output


def test_cli_reports_a_module_that_fails_to_import(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    broken = tmp_path / "broken_tasks.py"
    broken.write_text("raise RuntimeError('oops')\n")
    result = invoke("--module", str(broken))
    assert result.exit_code == 1
    assert "RuntimeError: oops" in result.output


class FakeWorker:
    """Stands in for Worker: records what the CLI built, runs nothing."""

    seen: dict = {}

    def __init__(self, settings, tasks, module_specs):
        FakeWorker.seen = {"settings": settings, "tasks": tasks, "module_specs": module_specs}

    async def run(self):
        pass

    def stop(self, *, force=False):
        pass


@pytest.fixture
def fake_worker(monkeypatch):
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    monkeypatch.setattr(cli, "Worker", FakeWorker)
    return FakeWorker


def test_cli_builds_settings_from_options(sample_tasks_path, fake_worker):
    result = invoke(
        "--module", sample_tasks_path,
        "--coordinator", "10.0.0.1:7000",
        "--cpu", "3.5",
        "--memory", "2Gi",
        "--resource", "gpu=1",
        "--max-concurrency", "7",
        "--worker-id", "w1",
        "--task-nice", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = fake_worker.seen["settings"]
    assert settings.coordinator == "10.0.0.1:7000"
    assert settings.capacity == {"cpu": 3.5, "memory": 2.0**31, "gpu": 1.0}
    assert (settings.max_concurrency, settings.worker_id) == (7, "w1")
    assert settings.task_nice == 3
    assert (
        "sample_tasks:double" in fake_worker.seen["tasks"]
        and "renamed" in fake_worker.seen["tasks"]
    )
    assert fake_worker.seen["module_specs"] == [sample_tasks_path]


def test_cli_defaults(sample_tasks_path, fake_worker, monkeypatch):
    monkeypatch.delenv("FLEETFLOW_COORDINATOR", raising=False)
    assert invoke("--module", sample_tasks_path).exit_code == 0
    settings = fake_worker.seen["settings"]
    assert settings.coordinator == "127.0.0.1:50051"
    assert settings.capacity == {"cpu": default_cpu(), "memory": default_memory()}
    assert settings.max_concurrency == 1000
    assert settings.task_nice == 10


def test_cli_coordinator_from_the_environment(sample_tasks_path, fake_worker, monkeypatch):
    monkeypatch.setenv("FLEETFLOW_COORDINATOR", "10.1.2.3:9")
    result = invoke("--module", sample_tasks_path)
    assert result.exit_code == 0, result.output
    assert fake_worker.seen["settings"].coordinator == "10.1.2.3:9"
