"""Large data, fleetflow against Dask in the same run (issue #13's benchmarks).

* **B1** a 500 MB float64 array made by one task and summed by the next
  (fleetflow: the default coordinator-hosted store, workers on the same
  machine read and write its folder; Dask: results in worker memory, moved
  between workers when the scheduler places the second task elsewhere);
* **B2** a no-op mapped over a 1,000,000-item list that an upstream task
  returns, then gathered by one task (fleetflow: one task run per item, the
  list stored in chunks; Dask: a ``dask.bag`` over the upstream list in 8
  partitions, the way Dask users map a million items, since a million
  futures would take Dask about half an hour here).

Both systems run two single-threaded worker processes and a scheduler (the
coordinator) in its own process, whose peak resident size is sampled every
50 ms. Writes the "Large data" section of ``benchmarks/RESULTS.md`` (between
its markers, the rest untouched).

Usage::

    .venv/bin/python benchmarks/large_data.py                 # 500 MB, 1,000,000 items, 3 reps
    .venv/bin/python benchmarks/large_data.py --quick         # 50 MB, 100,000 items, 1 rep
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), *(str(BENCH.parent / p) for p in ("client", "coordinator", "worker"))]

import ff_fleet  # noqa: E402
import large_tasks  # noqa: E402
from common import OUT, Proc, child_env, put_kept_section, python, wait_until  # noqa: E402

#: report.py keeps sections between these markers when it rewrites RESULTS.md.
BEGIN = "<!-- kept:begin large-data -->"
END = "<!-- kept:end -->"


class PeakRss:
    """Peak resident size of one process, sampled every 50 ms in a thread (MiB)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.peak / 2**20


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def run_fleetflow(array_bytes: int, items: int, reps: int) -> dict:
    ff_fleet.MODULE = BENCH / "large_tasks.py"
    fleet = ff_fleet.Fleet(OUT, "large-ff")
    out: dict = {"b1": [], "b2": []}
    try:
        fleet.start(workers=2, cpu=1, warm_up=False)
        client = fleet.client
        assert client.submit(large_tasks.warm).result(timeout=60) == (2, 3)
        rss = PeakRss(fleet.coordinator.pid)
        for _ in range(reps):
            seconds, value = timed(
                lambda: client.submit(large_tasks.big_array, n_bytes=array_bytes).result(
                    timeout=600
                )
            )
            out["b1"].append(seconds)
            out["b1_value"] = value
        for _ in range(reps):
            seconds, value = timed(
                lambda: client.submit(large_tasks.upstream_map, n=items).result(timeout=1800)
            )
            assert value == (items, items * (items - 1) // 2), value
            out["b2"].append(seconds)
        out["coordinator_peak_mib"] = rss.stop()
    finally:
        fleet.stop()
    return out


def run_dask(array_bytes: int, items: int, reps: int) -> dict:
    import dask
    import dask.bag as db
    from distributed import Client

    scheduler_file = OUT / "large-dask-scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    env = child_env()
    scheduler = Proc(
        [
            python(),
            "-m",
            "distributed.cli.dask_scheduler",
            "--scheduler-file",
            str(scheduler_file),
            "--port",
            "0",
            "--no-dashboard",
        ],
        OUT / "large-dask-scheduler.log",
        env=env,
    )
    workers = [
        Proc(
            [
                python(),
                "-m",
                "distributed.cli.dask_worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--memory-limit",
                "0",
                "--no-dashboard",
            ],
            OUT / f"large-dask-worker{i}.log",
            env=env,
        )
        for i in range(2)
    ]
    out: dict = {"b1": [], "b2": []}
    try:
        wait_until(scheduler_file.exists, 60, what="dask scheduler file")
        client = Client(scheduler_file=str(scheduler_file))
        client.wait_for_workers(2, timeout=60)
        rss = PeakRss(scheduler.pid)
        for _ in range(reps):

            def b1() -> float:
                made = client.submit(large_tasks.make_array, array_bytes, pure=False)
                summed = client.submit(large_tasks.array_sum, made)
                return summed.result()

            seconds, value = timed(b1)
            out["b1"].append(seconds)
            out["b1_value"] = value
        for _ in range(reps):

            def b2() -> tuple[int, int]:
                upstream = dask.delayed(large_tasks.numbers)(items)
                bag = db.from_delayed([upstream]).repartition(npartitions=8).map(large_tasks.noop)
                parts = bag.map_partitions(list).to_delayed()
                gathered = dask.delayed(lambda ps: large_tasks.total([x for p in ps for x in p]))(
                    parts
                )
                return client.compute(gathered).result()

            seconds, value = timed(b2)
            assert value == (items, items * (items - 1) // 2), value
            out["b2"].append(seconds)
        out["coordinator_peak_mib"] = rss.stop()
        client.close()
    finally:
        for proc in [*workers, scheduler]:
            proc.stop(grace_s=10)
    return out


def cell(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"**{median:.2f}** s"
    return f"**{median:.2f}** s ({min(values):.2f}–{max(values):.2f})"


def render(args: argparse.Namespace, ff: dict, dk: dict, command: str) -> str:
    import dask
    import numpy

    mb = args.array_mb
    rows = [
        (
            f"B1 {mb} MB array from one task to the next, wall s",
            cell(ff["b1"]),
            cell(dk["b1"]),
            statistics.median(ff["b1"]) / statistics.median(dk["b1"]),
        ),
        (
            f"B2 {args.items:,}-item upstream list mapped (no-op) and gathered, wall s",
            cell(ff["b2"]),
            cell(dk["b2"]),
            statistics.median(ff["b2"]) / statistics.median(dk["b2"]),
        ),
        (
            "coordinator / scheduler peak RSS over B1 and B2, MiB",
            f"**{ff['coordinator_peak_mib']:.0f}** MiB",
            f"**{dk['coordinator_peak_mib']:.0f}** MiB",
            ff["coordinator_peak_mib"] / dk["coordinator_peak_mib"],
        ),
    ]
    lines = [
        BEGIN,
        "## Large data (B1, B2)",
        "",
        "Written by `benchmarks/large_data.py` (issue #13); lower is better in every row.",
        "",
        f"- Command: `{command}`: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{args.reps} repetition(s), median (min–max)",
        f"- Machine: {os.cpu_count()} logical CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB memory, {platform.platform()}, "
        f"CPython {platform.python_version()}; numpy {numpy.__version__}, dask "
        f"{dask.__version__}",
        "- fleetflow: coordinator (default settings: SQLite in benchmarks/out, the result "
        "store hosted next to it) + 2 workers `--cpu 1`, on 127.0.0.1; the workers use the "
        "store's folder directly (same machine). Dask: `dask scheduler` + 2 `dask worker "
        "--nthreads 1 --nworkers 1`, on 127.0.0.1.",
        "- B2 on Dask is a `dask.bag` of 8 partitions over the upstream list (Dask's way to "
        "map a million items); on fleetflow, one task run per item in lease batches.",
        "",
        "| workload | fleetflow | dask | fleetflow / dask |",
        "|---|---|---|---|",
    ]
    for name, a, b, ratio in rows:
        verdict = "fleetflow better" if ratio < 0.97 else "dask better" if ratio > 1.03 else "even"
        lines.append(f"| {name} | {a} | {b} | {ratio:.2f}× ({verdict}) |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_section(target: Path, section: str) -> None:
    """Put the kept section ``section`` into ``target`` (see common.put_kept_section)."""
    put_kept_section(target, section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--array-mb", type=int, default=500)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="50 MB, 100,000 items, 1 rep")
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.array_mb, args.items, args.reps = 50, 100_000, 1
    OUT.mkdir(parents=True, exist_ok=True)
    command = "benchmarks/large_data.py " + " ".join(sys.argv[1:])
    array_bytes = args.array_mb * 10**6
    ff = run_fleetflow(array_bytes, args.items, args.reps)
    print("fleetflow", ff, flush=True)
    dk = run_dask(array_bytes, args.items, args.reps)
    print("dask", dk, flush=True)
    if abs(ff["b1_value"] - dk["b1_value"]) > 1e-6 * abs(dk["b1_value"]):
        raise SystemExit(f"B1 results differ: {ff['b1_value']} vs {dk['b1_value']}")
    section = render(args, ff, dk, ".venv/bin/python " + command.strip())
    write_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
