"""fleetflow's Dask executor against plain Dask on the same LocalCluster: W1 and W2 (issue 14).

    .venv/bin/python benchmarks/dask_executor.py [--reps 3] [--w1 10000] [--w2 1000]

One ``distributed.LocalCluster`` (2 worker processes, 1 thread each, on
127.0.0.1, no dashboard) runs in this process for the whole run. On it:

* **dask**: ``client.map`` of the same task bodies (``workloads.inc``,
  ``workloads.sleep_task``), gathered, results checked (as ``peers.py`` does);
* **fleetflow-dask**: a fresh coordinator (defaults) and one worker process
  started with ``--executor dask --dask-scheduler <the cluster>``; the flows of
  ``ff_tasks.py`` (``w1_map``, ``w2_sleep``) submitted by a client, results
  checked. The worker offers the cluster's 2 threads as its capacity; short
  task runs reach Dask as lease batches, one future each.

W1 is a no-op map of ``--w1`` items, W2 a map of ``--w2`` 10 ms sleeps. Each
repetition runs both systems, alternating which goes first, so machine load
affects both alike. Prints a markdown table (task runs/s, and the ratio
fleetflow-dask / dask of the medians: above 1 means fleetflow is faster) and
writes it to ``benchmarks/out/dask_executor.md`` and into ``benchmarks/RESULTS.md``
between the markers below (other sections are left alone; ``run.py`` keeps it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402
from common import OUT, ROOT, put_kept_section, stop_all  # noqa: E402
from ff_fleet import Fleet, run_rep  # noqa: E402

BEGIN = "<!-- kept:begin dask-executor -->"
END = "<!-- kept:end -->"
SYSTEMS = ("dask", "fleetflow-dask")
#: What the table shows, whatever the figures.
WHY = (
    "Why the two differ: plain Dask queues every future at once, so its 2 threads never wait;"
    " the fleetflow worker leases what the cluster can run now (its 2 threads), so each lease"
    " batch (the coordinator sizes batches to about 50 ms, 5 members of W2) pays a Dask round"
    " trip and a report-and-lease round trip before the next batch starts. For W1 that costs "
    "nothing next to what batching saves (Dask pays a scheduler round trip per tiny future, "
    "fleetflow one per batch of up to 256); for W2 the gap between batches is idle thread "
    "time. Leasing ahead of the threads (queueing a batch in Dask per thread) would close it,"
    " at the price of attempts whose timeouts start while they wait in Dask's queue."
)


def write_results(body: str) -> str:
    """Put ``body`` into RESULTS.md as the kept Dask executor section; return the section."""
    section = "\n".join(
        [BEGIN, "## The Dask executor against plain Dask (issue 14)", "", body.rstrip("\n"), END]
    )
    put_kept_section(Path(__file__).resolve().parent / "RESULTS.md", section)
    return section


def dask_rep(client, workload: str, n: int) -> float:
    t0 = time.perf_counter()
    if workload == "W1":
        results = client.gather(client.map(workloads.inc, range(n), pure=False))
        assert results == list(range(1, n + 1)), "W1 results differ"
    else:
        results = client.gather(client.map(workloads.sleep_task, range(n), pure=False))
        assert results == list(range(n)), "W2 results differ"
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--w1", type=int, default=10_000, help="W1 items [10000]")
    parser.add_argument("--w2", type=int, default=1_000, help="W2 items (10 ms each) [1000]")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster

    OUT.mkdir(exist_ok=True)
    dask.config.set({"distributed.admin.system-monitor.gil.enabled": False})
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = Client(cluster)
    fleet = Fleet(OUT, "dask-executor")
    walls: dict[tuple[str, str], list[float]] = {}
    sizes = {"W1": args.w1, "W2": args.w2}
    try:
        assert client.gather(client.map(workloads.inc, [0, 1], pure=False)) == [1, 2]
        executor_args = ["--executor", "dask", "--dask-scheduler", cluster.scheduler_address]
        fleet.start(workers=1, worker_args=executor_args)
        for rep in range(args.reps):
            for workload in ("W1", "W2"):
                order = SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]
                for system in order:
                    n = sizes[workload]
                    if system == "dask":
                        wall = dask_rep(client, workload, n)
                    else:
                        wall = run_rep(fleet, workload, n, timeout_s=300)["wall_s"]
                    walls.setdefault((system, workload), []).append(wall)
                    print(f"rep {rep + 1} {workload} {system}: {n / wall:,.0f} task runs/s")
    finally:
        fleet.stop()
        client.close()
        cluster.close()
        stop_all()
    body = render(walls, sizes, args)
    print(body)
    (OUT / "dask_executor.md").write_text(body)
    if not args.no_write:
        write_results(body)
    return 0


def render(walls: dict[tuple[str, str], list[float]], sizes: dict[str, int], args) -> str:
    load = os.getloadavg()[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Command: `.venv/bin/python benchmarks/dask_executor.py --reps {args.reps} "
        f"--w1 {args.w1} --w2 {args.w2}` ({when} at fleetflow {commit}; 1-minute load "
        f"average {load:.1f} at the end, on {os.cpu_count()} CPUs shared with other work). "
        "One `LocalCluster(n_workers=2, threads_per_worker=1, processes=True)` serves both "
        "sides: plain Dask (`client.map`, gathered) and a fleetflow coordinator (defaults) "
        "with one worker `--executor dask --dask-scheduler` that cluster (flows from "
        "`ff_tasks.py`); repetitions alternate which side goes first.",
        "",
        "| workload | dask, task runs/s median (min-max) | fleetflow --executor dask "
        "| ratio fleetflow / dask |",
        "|---|---|---|---|",
    ]
    names = {"W1": "W1 no-op map", "W2": "W2 map of 10 ms sleeps"}
    for workload in ("W1", "W2"):
        n = sizes[workload]
        rates = {s: [n / w for w in walls.get((s, workload), [])] for s in SYSTEMS}
        if not all(rates.values()):
            continue
        med = {s: statistics.median(r) for s, r in rates.items()}
        cells = [
            f"**{med[s]:,.0f}**/s ({min(rates[s]):,.0f}-{max(rates[s]):,.0f})" for s in SYSTEMS
        ]
        ratio = med["fleetflow-dask"] / med["dask"]
        label = f"{names[workload]}, {n:,} items"
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | **{ratio:.2f}** |")
    lines += ["", WHY]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
