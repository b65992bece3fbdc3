"""How throughput grows with the fleet: W1, W2 and W4 at several worker counts (issue 18).

    .venv/bin/python benchmarks/scaling.py                       # 1, 4, 8, 14 workers
    .venv/bin/python benchmarks/scaling.py --workers 1,2 --quick # a 2-core machine

For each worker count k, in one run and on one machine:

* fleetflow: a coordinator and k worker processes with ``--cpu 1`` each (as in
  ``run.py``), the client in this process;
* Dask: ``LocalCluster(n_workers=k, threads_per_worker=1, processes=True)`` in a
  ``peers.py`` subprocess inside a loopback-only network namespace;
* ``multiprocessing.Pool(k)``: the bare baseline, ``pool.map`` in this process.

Workloads (bodies from ``workloads.py``, the same for every system):

* W1: a no-op map of ``--w1`` items (the same size at every k): task runs/s;
* W2: ``200 * k`` sleeps of 10 ms, so the ideal wall time is 2 s at every k;
  efficiency = ideal / measured;
* W4: ``40 * k`` pure-Python CPU tasks of about 50 ms (ideal 2 s at every k, if
  the machine has k free cores); reported against the pool's wall time.

Also recorded for fleetflow: the coordinator's CPU seconds per W1 task run, the
number that bounds how far one coordinator scales (a coordinator that spends
``c`` seconds of CPU per task run cannot go past ``1 / c`` task runs/s).

Writes ``benchmarks/out/scaling.json`` and prints a Markdown table to paste into
``RESULTS.md``. Every process started is stopped, also on failure.
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import workloads
from common import OUT, stop_all
from ff_fleet import Fleet, bounded, run_rep
from run import UNSHARE_PREFIX, check_unshare, log, machine

BENCH = Path(__file__).resolve().parent


def _pool_rep(pool, workload: str, n: int, iters: int) -> float:
    t0 = time.perf_counter()
    if workload == "W1":
        assert pool.map(workloads.inc, range(n)) == list(range(1, n + 1))
    elif workload == "W2":
        assert pool.map(workloads.sleep_task, range(n)) == list(range(n))
    else:
        out = pool.starmap(workloads.cpu_burn, [(i, iters) for i in range(n)])
        assert len(out) == n
    return time.perf_counter() - t0


def run_pool(k: int, plan: dict[str, int], iters: int, reps: int) -> dict:
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(k) as pool:
        pool.map(workloads.inc, range(k))  # every process started
        return {w: [_pool_rep(pool, w, n, iters) for _ in range(reps)] for w, n in plan.items()}


def run_fleetflow(k: int, plan: dict[str, int], iters: int, reps: int, timeout_s: float) -> dict:
    fleet = Fleet(OUT, f"scale-ff-{k}")
    out: dict = {}
    try:
        out["startup"] = bounded(lambda: fleet.start(workers=k, cpu=1), 120, fleet.stop)
        for workload, n in plan.items():
            out[workload] = [
                bounded(
                    lambda w=workload, n=n: run_rep(fleet, w, n, iters, timeout_s=timeout_s),
                    timeout_s + 10,
                    fleet.stop,
                )
                for _ in range(reps)
            ]
    finally:
        fleet.stop()
    return out


def run_dask(k: int, workload: str, n: int, iters: int, reps: int, timeout_s: float) -> dict:
    import subprocess

    from common import child_env, python

    out = OUT / f"scale-dask-{k}-{workload}.json"
    out.unlink(missing_ok=True)
    cmd = [
        *UNSHARE_PREFIX,
        python(),
        str(BENCH / "peers.py"),
        "--system",
        "dask",
        "--workload",
        workload,
        "--n",
        str(n),
        "--iters",
        str(iters),
        "--reps",
        str(reps),
        "--long-s",
        "1e9",
        "--timeout",
        str(timeout_s),
        "--n-workers",
        str(k),
        "--out",
        str(out),
    ]
    log_path = OUT / f"scale-dask-{k}-{workload}.log"
    with open(log_path, "ab") as log_file:
        try:
            subprocess.run(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env(),
                timeout=timeout_s + 60,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return {"status": "did_not_finish"}
    if not out.exists():
        return {"status": "failed", "error": f"no result; see {log_path}"}
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,4,8,14", help="worker counts [1,4,8,14]")
    parser.add_argument("--systems", default="fleetflow,dask,pool")
    parser.add_argument("--w1", type=int, default=100_000, help="W1 items [100,000]")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="W1 of 10,000, W2/W4 a quarter")
    parser.add_argument("--timeout", type=float, default=600.0, help="per repetition [600 s]")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    OUT.mkdir(exist_ok=True)
    atexit.register(stop_all)
    info = machine()
    log(f"machine: {info['nproc']} CPUs, {info['memory_gib']} GiB")
    iters = workloads.calibrate_cpu_burn()
    w1 = 10_000 if args.quick else args.w1
    scale = 4 if args.quick else 1
    netns = check_unshare() if "dask" in systems else None
    results: dict = {"machine": info, "command": " ".join(sys.argv), "w4_iters": iters, "rows": []}
    for k in counts:
        plan = {"W1": w1, "W2": 200 * k // scale, "W4": 40 * k // scale}
        row: dict = {"workers": k, "plan": plan}
        log(f"k={k}: {plan}")
        if "pool" in systems:
            row["pool"] = run_pool(k, plan, iters, args.reps)
        if "fleetflow" in systems:
            try:
                row["fleetflow"] = run_fleetflow(k, plan, iters, args.reps, args.timeout)
            except Exception as exc:  # noqa: BLE001 - recorded
                row["fleetflow"] = {"status": "failed", "error": repr(exc)[:300]}
        if "dask" in systems:
            row["dask"] = (
                {"status": "failed", "error": netns}
                if netns
                else {w: run_dask(k, w, n, iters, args.reps, args.timeout) for w, n in plan.items()}
            )
        results["rows"].append(row)
        (OUT / "scaling.json").write_text(json.dumps(results, indent=1, default=str))
    print(render(results))
    return 0


def _walls(res, workload: str) -> float | None:
    """Median wall seconds of one system's repetitions of a workload, or None."""
    if not isinstance(res, dict):
        return None
    reps = res.get(workload)
    if isinstance(reps, dict):  # a peers.py result
        reps = [r["wall_s"] for r in reps.get("reps", [])]
    elif isinstance(reps, list):
        reps = [r["wall_s"] if isinstance(r, dict) else r for r in reps]
    return statistics.median(reps) if reps else None


def render(results: dict) -> str:
    """The scaling table as Markdown."""
    m = results["machine"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}; commit {m['commit']}.",
        f"Command: `.venv/bin/python {results['command']}`",
        "",
        "| workers | W1 fleetflow /s | W1 Dask /s | W1 pool /s | coordinator CPU per W1 task run "
        "| W2 efficiency fleetflow | Dask | pool | W4 fleetflow vs pool | Dask vs pool |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        k, plan = row["workers"], row["plan"]
        cells = [str(k)]
        for system in ("fleetflow", "dask", "pool"):
            wall = _walls(row.get(system), "W1")
            cells.append(f"{plan['W1'] / wall:,.0f}" if wall else "—")
        ff = row.get("fleetflow") or {}
        w1 = ff.get("W1") if isinstance(ff, dict) else None
        if w1:
            per = statistics.median(r["coordinator_cpu_s"] for r in w1) / plan["W1"] * 1e6
            cells.append(f"{per:.1f} µs")
        else:
            cells.append("—")
        ideal = plan["W2"] * workloads.W2_SLEEP_S / k
        for system in ("fleetflow", "dask", "pool"):
            wall = _walls(row.get(system), "W2")
            cells.append(f"{ideal / wall:.2f}" if wall else "—")
        pool = _walls(row.get("pool"), "W4")
        for system in ("fleetflow", "dask"):
            wall = _walls(row.get(system), "W4")
            cells.append(f"{pool / wall:.2f}" if wall and pool else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
