from __future__ import annotations

import sys
from pathlib import Path

import pytest
import structlog
from fleetflow.execution import Task
from fleetflow_worker._child import load_tasks

SAMPLE_TASKS = str(Path(__file__).with_name("sample_tasks.py"))


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def sample_tasks_path() -> str:
    """Path of the tasks module the tests load (also in pool processes)."""
    return SAMPLE_TASKS


@pytest.fixture(scope="session")
def sample_tasks() -> dict[str, Task]:
    return load_tasks([SAMPLE_TASKS])


@pytest.fixture(autouse=True)
def _no_real_gpus(monkeypatch):
    """Worker tests see no GPUs unless they install a fake NVML (tests/worker/fake_nvml.py)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
