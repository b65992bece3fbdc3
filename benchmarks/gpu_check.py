"""Check GPU discovery, device assignment and warm seats on a machine with an NVIDIA GPU.

Issue 15's real-GPU scenario, against a real coordinator and one worker started
with **no GPU flags at all**:

1. default discovery: the worker registers ``gpu`` = the NVML device count and
   ``gpu_memory`` = their total memory;
2. eight ``gpu=1`` torch tasks (``benchmarks/gpu_tasks.py``): on a one-GPU worker
   they run one at a time, each seeing ``CUDA_VISIBLE_DEVICES=0`` (with more
   GPUs: attempts that overlap see different devices);
3. warm seats: the first attempt in a task process pays ``import torch`` and the
   CUDA initialisation, later ones reuse the process (``fleetflow.keep``), so the
   per-attempt wall time drops after the first;
4. measured GPU use: every attempt reports its devices, peak GPU memory and
   utilisation (``fleetflow inspect TASK_RUN_ID``).

Needs ``pip install "fleetflow[gpu]" torch`` and an NVIDIA driver. Exits 0 when
every check holds, 1 when one fails, 2 when the machine has no usable GPU. With
``--write`` it records its figures in ``benchmarks/RESULTS.md`` (the "GPU check"
section, between its markers; report.py keeps it).

Usage::

    .venv/bin/python benchmarks/gpu_check.py            # print the figures
    .venv/bin/python benchmarks/gpu_check.py --write    # and record them
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), *(str(BENCH.parent / p) for p in ("client", "coordinator", "worker"))]

from common import OUT, Proc, put_kept_section, python, wait_until  # noqa: E402
from fleetflow import Client  # noqa: E402

BEGIN = "<!-- kept:begin gpu-check -->"
END = "<!-- kept:end -->"


def nvml_devices() -> tuple[list[dict], str] | None:
    """The GPUs NVML reports and the driver version; None without NVML or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        print(f"no usable NVML: {type(exc).__name__}: {exc}")
        return None
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory": float(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                }
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
        return devices, driver.decode() if isinstance(driver, bytes) else driver
    finally:
        pynvml.nvmlShutdown()


def start_fleet(logdir: Path) -> tuple[Proc, Proc, str]:
    port_file = logdir / "gpu-port"
    port_file.unlink(missing_ok=True)
    coordinator = Proc(
        [python(), "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--db", ":memory:", "--http", "off"],
        logdir / "gpu-coordinator.log",
    )  # fmt: skip
    wait_until(lambda: port_file.exists() or not coordinator.alive(), 30, what="coordinator")
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    # No --gpus, no --resource: discovery alone.
    worker = Proc(
        [python(), "-m", "fleetflow_worker", "--coordinator", address,
         "--module", str(BENCH / "gpu_tasks.py")],
        logdir / "gpu-worker.log",
    )  # fmt: skip
    return coordinator, worker, address


def check(devices: list[dict], rounds: int) -> tuple[list[str], dict]:
    """Run the scenario; returns the failed checks and the figures."""
    failures: list[str] = []
    OUT.mkdir(parents=True, exist_ok=True)
    coordinator, worker, address = start_fleet(OUT)
    figures: dict = {}
    try:
        with Client(address) as client:
            workers = wait_until(client.list_workers, 60, what="worker registration")
            capacity = workers[0].capacity
            figures["capacity"] = capacity
            want_memory = sum(d["memory"] for d in devices)
            if capacity.get("gpu") != len(devices):
                failures.append(f"gpu capacity {capacity.get('gpu')} != {len(devices)} GPUs")
            if abs(capacity.get("gpu_memory", 0) - want_memory) > 1:
                failures.append(f"gpu_memory {capacity.get('gpu_memory')} != {want_memory}")
            t0 = time.perf_counter()
            run = client.submit(__import__("gpu_tasks").eight, n=8, rounds=rounds)
            results = run.result(timeout=600)
            figures["flow_wall_s"] = time.perf_counter() - t0
            task_runs = sorted({e.task_run_id for e in client.watch(run.id) if e.task_run_id})
            attempts = [a for t in task_runs for a in client.get_task_run(t).attempts]
    finally:
        worker.stop()
        coordinator.stop()
    figures["results"] = results
    figures["attempts"] = [
        {"devices": list(a.gpu_devices), "peak_gpu_memory_bytes": a.peak_gpu_memory_bytes,
         "gpu_utilization_percent": a.gpu_utilization_percent}
        for a in attempts
    ]  # fmt: skip
    if len(devices) == 1 and any(r["visible"] != "0" for r in results):
        failures.append(f"CUDA_VISIBLE_DEVICES seen: {sorted({r['visible'] for r in results})}")
    if any(r["device_count"] != 1 for r in results):
        failures.append("an attempt saw more than its one device")
    for a, b in itertools.combinations(results, 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"] and a["visible"] == b["visible"]:
            failures.append(f"attempts {a['i']} and {b['i']} shared device {a['visible']}")
    cold = [r["in_task_s"] for r in results if not r["warm"]]
    warm = [r["in_task_s"] for r in results if r["warm"]]
    figures["cold_s"], figures["warm_s"] = cold, warm
    if not warm:
        failures.append("no attempt reused a warm task process")
    elif statistics.median(warm) >= min(cold):
        failures.append(f"warm attempts ({statistics.median(warm):.3f} s) not faster than cold")
    if len(figures["attempts"]) != 8 or not all(a["devices"] for a in figures["attempts"]):
        failures.append("inspect does not show every attempt's devices")
    if not any(a["peak_gpu_memory_bytes"] > 0 for a in figures["attempts"]):
        failures.append("no attempt reported its peak GPU memory")
    return failures, figures


def section(devices: list[dict], driver: str, figures: dict, failures: list[str]) -> str:
    gib = 2**30
    results = figures["results"]
    cold, warm = figures["cold_s"], figures["warm_s"]
    peaks = [a["peak_gpu_memory_bytes"] for a in figures["attempts"]]
    utils = [
        a["gpu_utilization_percent"]
        for a in figures["attempts"]
        if a["gpu_utilization_percent"] is not None
    ]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    seen = sorted({r["visible"] for r in results})
    processes = len({r["pid"] for r in results})
    lines = [
        BEGIN,
        "## GPU check (issue 15)",
        "",
        f"`benchmarks/gpu_check.py --write`, {now}; driver {driver}; "
        + ", ".join(f"GPU {d['index']}: {d['name']} ({d['memory'] / gib:.0f} GiB)" for d in devices)
        + f"; CPython {platform.python_version()}.",
        "",
        f"- Default discovery (no worker flags): `gpu` = {figures['capacity'].get('gpu'):g}, "
        f"`gpu_memory` = {figures['capacity'].get('gpu_memory', 0) / gib:.1f} GiB.",
        f"- 8 `gpu=1` torch tasks: CUDA_VISIBLE_DEVICES seen {seen}, {processes} task "
        f"process(es), flow wall {figures['flow_wall_s']:.1f} s.",
        f"- Per-attempt wall time in the task: cold (first in its process) "
        f"{', '.join(f'{c:.2f}' for c in cold)} s; warm median "
        f"{statistics.median(warm) if warm else float('nan'):.3f} s over {len(warm)}.",
        f"- Measured: peak GPU memory median {statistics.median(peaks) / 2**20:.0f} MiB; "
        f"utilisation median {statistics.median(utils) if utils else float('nan'):.0f} %.",
        f"- Checks: {'all passed' if not failures else 'FAILED: ' + '; '.join(failures)}.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(target: Path, text: str) -> None:
    """Put the kept section ``text`` into ``target`` (see common.put_kept_section)."""
    put_kept_section(target, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="matmuls per attempt")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()
    found = nvml_devices()
    if not found or not found[0]:
        print("no NVIDIA GPU here: nothing to check")
        return 2
    devices, driver = found
    try:
        import torch

        if not torch.cuda.is_available():
            print("torch sees no CUDA device: nothing to check")
            return 2
    except ImportError:
        print("torch is not installed: pip install torch")
        return 2
    failures, figures = check(devices, args.rounds)
    print(json.dumps({k: v for k, v in figures.items() if k != "results"}, indent=1, default=str))
    text = section(devices, driver, figures, failures)
    print(text)
    if args.write:
        write_section(BENCH / "RESULTS.md", text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
