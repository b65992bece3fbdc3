"""SQLite store against the memory store on a 10,000-item no-op map (issue 3).

    .venv/bin/python benchmarks/store_ratio.py [--reps 3] [--n 10000]

Runs the same W1 map (x -> x + 1, results collected and checked) on a
coordinator with ``--db :memory:`` and on one with a fresh SQLite file (the
default store), 2 worker processes with ``--cpu 1`` each, alternating the two
stores repetition by repetition so that machine load affects both alike.
Prints a markdown table with medians, min and max and the ratio
sqlite / memory, and writes it to ``benchmarks/out/store_ratio.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ff_tasks  # noqa: E402
from common import OUT  # noqa: E402
from ff_fleet import Fleet  # noqa: E402


def one_rep(store: str, n: int, logdir: Path) -> float:
    fleet = Fleet(logdir, f"store-{store}")
    args = ("--db", ":memory:") if store == "memory" else ()
    try:
        fleet.start(workers=2, cpu=1, coordinator_args=args)
        assert fleet.client is not None
        started = time.perf_counter()
        result = fleet.client.submit(ff_tasks.w1_map, n=n).result(timeout=600)
        elapsed = time.perf_counter() - started
        assert result == [i + 1 for i in range(n)], "wrong results"
        return n / elapsed
    finally:
        fleet.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=10_000)
    ns = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {"memory": [], "sqlite": []}
    for rep in range(ns.reps):
        for store in ("memory", "sqlite") if rep % 2 == 0 else ("sqlite", "memory"):
            rate = one_rep(store, ns.n, OUT)
            rates[store].append(rate)
            print(f"rep {rep + 1} {store}: {rate:,.0f} task runs/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    lines = [
        f"Command: `.venv/bin/python benchmarks/store_ratio.py --reps {ns.reps} --n {ns.n}`",
        "",
        "| store | task runs/s, median (min-max) |",
        "|---|---|",
    ]
    for store, values in rates.items():
        lines.append(f"| {store} | **{med[store]:,.0f}** ({min(values):,.0f}-{max(values):,.0f}) |")
    lines += [
        "",
        f"Ratio sqlite / memory (medians): **{med['sqlite'] / med['memory']:.2f}** "
        "(target: at least 0.70).",
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "store_ratio.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
