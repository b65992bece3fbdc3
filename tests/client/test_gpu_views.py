"""GPU columns in `fleetflow inspect`: per task (usage) and per attempt (devices)."""

from __future__ import annotations

from fleetflow._cli_control import _gpu_cells
from fleetflow._cli_views import _usage_table
from fleetflow._stats import Quantiles, ResourceAdvice, TaskUsage
from fleetflow._taskruns import AttemptInfo
from rich.console import Console

GiB = 2**30


def usage(gpu_measured: int) -> TaskUsage:
    q = Quantiles(1.0, 2.0, 3.0)
    return TaskUsage(
        node=0,
        task_name="embed",
        requested={"cpu": 1, "gpu": 1},
        measured_attempts=4,
        cpu_cores=q,
        cpu_seconds=q,
        peak_memory_bytes=Quantiles(GiB, GiB, GiB),
        duration_seconds=q,
        advice=(ResourceAdvice("gpu", 1, 20, 0.25, "embed requests gpu 1 ..."),),
        gpu_measured_attempts=gpu_measured,
        peak_gpu_memory_bytes=Quantiles(2 * GiB, 3 * GiB, 3 * GiB),
        gpu_utilization_percent=Quantiles(15, 20, 25),
    )


def render(table) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return console.export_text()


def test_usage_table_shows_gpu_columns_only_when_measured():
    text = render(_usage_table((usage(4),)))
    assert "gpu util / memory p95" in text and "20% / 3.0 GiB" in text
    assert "gpu util" not in render(_usage_table((usage(0),)))


def test_attempt_cells_show_devices_memory_and_utilisation():
    base = dict(
        attempt=1, worker_id="w", started_at=1, ended_at=2, outcome="COMPLETED", error=None,
        infrastructure=False, message="",
    )  # fmt: skip
    held = AttemptInfo(
        **base, gpu_devices=("0", "2"), peak_gpu_memory_bytes=GiB, gpu_utilization_percent=42.4
    )
    assert _gpu_cells(held) == ["0,2", "1.0 GiB", "42%"]
    assert _gpu_cells(AttemptInfo(**base)) == ["-", "-", "-"]
    unmeasured = AttemptInfo(**base, gpu_devices=("1",))
    assert _gpu_cells(unmeasured) == ["1", "-", "-"]
