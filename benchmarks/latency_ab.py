"""A/B of fleetflow's W3 round trip and W1 coordinator CPU between source trees (issue 18).

    .venv/bin/python benchmarks/latency_ab.py --trees BASE,. [--reps 4] [--w3 200] [--w1 20000]

Each repetition starts a fresh fleet (coordinator + 2 workers ``--cpu 1``, as
``run.py`` does) from one tree, runs W3 (``--w3`` one-task flows in
sequence: p50 and p99 of the round trip, coordinator CPU per flow run; with
``client.run`` where the tree's client has it, else ``submit(...).result()``) and
W1 (``--w1``-item no-op map: coordinator CPU per task run, from psutil's CPU
times before and after), then stops it. Trees alternate A, B, B, A, A, B, ...
so a change in the machine's load falls on both. On a shared machine the CPU
figures are the steady ones; wall-clock latency moves with the load.

A tree is a checkout (its ``client/``, ``coordinator/``, ``worker/`` and
``benchmarks/`` are used: the fleet *and* this client process). Output: one
JSON line per repetition, then medians per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_ONE = r"""
import json, sys, time
import ff_tasks
from common import OUT, cpu_s, percentile, stop_all
from ff_fleet import Fleet

w3, w1, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
out = OUT / "latency_ab"
out.mkdir(parents=True, exist_ok=True)
fleet = Fleet(out, tag)
try:
    fleet.start()
    client, pid = fleet.client, fleet.coordinator.pid
    if hasattr(client, "run"):  # submit and wait in one call (issue 18)
        w3_call = lambda i: client.run(ff_tasks.w3_one, x=i, timeout=60)
    else:  # a tree from before client.run
        w3_call = lambda i: client.submit(ff_tasks.w3_one, x=i).result(timeout=60)
    for i in range(20):  # warm-up of the W3 path
        w3_call(i)
    rep = {}
    if w3:
        lat = []
        c0 = cpu_s(pid)
        for i in range(w3):
            t = time.perf_counter()
            assert w3_call(i) == i + 1
            lat.append((time.perf_counter() - t) * 1000)
        rep["w3_coord_cpu_us"] = (cpu_s(pid) - c0) / w3 * 1e6
        rep["w3_p50_ms"] = percentile(lat, 50)
        rep["w3_p99_ms"] = percentile(lat, 99)
    if w1:
        c0 = cpu_s(pid)
        t = time.perf_counter()
        assert client.submit(ff_tasks.w1_map, n=w1).result(timeout=600) == list(range(1, w1 + 1))
        wall = time.perf_counter() - t
        rep["w1_coord_cpu_us"] = (cpu_s(pid) - c0) / w1 * 1e6
        rep["w1_rate"] = w1 / wall
    print("RESULT " + json.dumps(rep))
finally:
    fleet.stop()
    stop_all()
"""


def run_one(tree: Path, w3: int, w1: int, tag: str, extra_env: dict[str, str]) -> dict:
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = os.pathsep.join(
        str(tree / p) for p in ("client", "coordinator", "worker", "benchmarks")
    )
    proc = subprocess.run(
        [sys.executable, "-c", _ONE, str(w3), str(w1), tag],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{tree}: no result\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--trees", required=True, help="comma-separated checkouts, e.g. /tmp/base,."
    )
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--w3", type=int, default=200)
    parser.add_argument("--w1", type=int, default=20_000)
    args = parser.parse_args()
    # A tree may carry settings for its fleet: PATH+FLEETFLOW_X=1+FLEETFLOW_Y=2.
    trees = []
    for spec in args.trees.split(","):
        path, *pairs = spec.split("+")
        trees.append((spec, Path(path).resolve(), dict(p.split("=", 1) for p in pairs)))
    results: dict[str, list[dict]] = {spec: [] for spec, _, _ in trees}
    for rep in range(args.reps):
        order = trees if rep % 2 == 0 else list(reversed(trees))
        for i, (spec, tree, extra_env) in enumerate(order):
            r = run_one(tree, args.w3, args.w1, f"ab{i}", extra_env)
            r["load1"] = os.getloadavg()[0]
            results[spec].append(r)
            print(json.dumps({"tree": spec, "rep": rep, **r}), flush=True)
    print("\nmedians (min-max):")
    for tree, reps in results.items():
        cells = []
        for key in reps[0]:
            values = [r[key] for r in reps]
            cells.append(
                f"{key}={statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
            )
        print(f"{tree}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
