"""Coordinator restart: restore time against stored rows (issue 11, item 7).

    .venv/bin/python benchmarks/restore.py [--sizes 2000,20000,100000] [--json OUT]

For each size N it builds one flow run of N plain nodes in the pure core (half
of them leased, a quarter completed, so every kind of stored row is there),
writes it through the real store (SQLite in a temporary folder), and then
times what a restarting coordinator does: open the database, load every row,
decode the rows and rebuild the core (``store.rows.restore_snapshot``, the
path ``Runtime.open`` takes). Prints one line per size: stored rows, seconds
for each phase, CPU seconds. Runs against whatever ``fleetflow_coordinator``
is importable, so the same script measures an older checkout with
``PYTHONPATH=OLD/coordinator:OLD/client``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sqlite3
import tempfile
import time

from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.convert import node_specs
from fleetflow_coordinator.core import Outcome, Scheduler
from fleetflow_coordinator.store import rows as store_rows
from fleetflow_coordinator.store.sqlite import SqliteStore


def build(n: int) -> Scheduler:
    """One flow run of ``n`` plain nodes: half leased, a quarter completed."""
    spec = common_pb2.FlowSpec(name="restore-bench", output_literal=pickle.dumps(None))
    cpu = common_pb2.Resources(amounts={"cpu": 1.0})
    for i in range(n):
        node = spec.nodes.add(task_name="t", resources=cpu)
        node.args.add(name="x", literal=pickle.dumps(i))
    core = Scheduler(lease_ttl_s=1e9)
    core.max_leases_per_worker = n  # one worker holds half of them (an attribute: older checkouts)
    now = 1000.0
    core.register_worker("w", {"cpu": 1e12}, frozenset({"t"}), now)
    core.submit(
        "f",
        spec.name,
        node_specs(spec),
        now,
        output_literal=b"",
        spec_blob=spec.SerializeToString(),
    )
    grants = core.lease("w", n // 2, now) or []
    done = [Outcome(g.task_run.id, g.attempt, value=pickle.dumps(1)) for g in grants[: n // 4]]
    core.report("w", done, now)
    return core


def restore_into(core: Scheduler, snapshot, now: float) -> None:
    """The restart path of the checkout being measured."""
    restore = getattr(store_rows, "restore_snapshot", None)
    if restore is not None:
        restore(core, snapshot, now)
    else:  # before issue 11: decode, then restore, collector running
        core.restore(store_rows.snapshot_to_flows(snapshot), now, snapshot.next_task_run_id)


def measure(n: int) -> dict:
    """Store a flow run of ``n`` nodes, then time a restart from the database."""
    core = build(n)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fleetflow.db")
        store = SqliteStore(path)
        store.write(store_rows.changes_to_batch(core.drain_changes()))
        store.close()
        del core
        with sqlite3.connect(path) as db:
            stored = {
                table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("flows", "nodes", "task_runs", "events", "expansions")
            }
        cpu0, t0 = time.process_time(), time.perf_counter()
        store = SqliteStore(path)
        snapshot = store.load()
        t1 = time.perf_counter()
        fresh = Scheduler(lease_ttl_s=10.0)
        restore_into(fresh, snapshot, 2000.0)
        t2 = time.perf_counter()
        cpu = time.process_time() - cpu0
        store.close()
    assert len(fresh.task_runs) == n
    return {
        "nodes": n,
        "stored_rows": sum(stored.values()),
        **{f"rows_{k}": v for k, v in stored.items()},
        "load_s": round(t1 - t0, 3),
        "restore_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "cpu_s": round(cpu, 3),
    }


def main() -> None:
    """Run the sizes given and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,20000,50000,100000")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    results = []
    head = ("nodes", "stored rows", "load s", "restore s", "total s", "cpu s")
    print("{:>8} {:>12} {:>8} {:>10} {:>8} {:>7}".format(*head))
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n)
        results.append(r)
        print(
            f"{r['nodes']:>8,} {r['stored_rows']:>12,} {r['load_s']:>8.2f} "
            f"{r['restore_s']:>10.2f} {r['total_s']:>8.2f} {r['cpu_s']:>7.2f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
