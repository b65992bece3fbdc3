"""W1's coordinator work per task run in one process: no gRPC, no workers, no event loop.

    .venv/bin/python benchmarks/w1_inprocess.py [--n 50000] [--profile]

Drives what the coordinator does for a no-op map on two workers with
``--cpu 1`` (issue 18): each worker's report of its lease batch is decoded,
applied (``Scheduler.report``), folded into the usage sketches, answered with
the next lease batch (``Scheduler.lease``, ``convert.add_leases``, serialized),
committed to a fresh SQLite store and folded for the dashboard; the map's
items are a stored list in 4,096-item chunks, as the client stores 100,000
pickled ints. Prints the process CPU per task run of that work, and of the
store's write alone. The workers' messages are built outside the timing; the
garbage collector runs with the coordinator process's thresholds.

Steadier than a fleet on a shared machine (one process, CPU time) and quick
to repeat, so it suits A/B runs of the coordinator's own code: run it with
``PYTHONPATH`` set to another tree's ``client`` and ``coordinator`` to compare.
The fleet measure stays ``latency_ab.py`` (gRPC and the worker's side are not
here).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import tempfile
import time
from pathlib import Path

from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.store.refs import StoredItems, StoredRef
from fleetflow_coordinator import cli, convert
from fleetflow_coordinator.core import Arg, ArgKind, NodeSpec, Scheduler
from fleetflow_coordinator.logs import configure_logging
from fleetflow_coordinator.metrics import Metrics
from fleetflow_coordinator.observe import Observer
from fleetflow_coordinator.observe_fold import AttemptLog
from fleetflow_coordinator.store.rows import changes_to_batch
from fleetflow_coordinator.store.sqlite import SqliteStore
from fleetflow_coordinator.usage import UsageBook

FLOW = "0123456789abcdef0123456789abcdef"
TASK = "ff_tasks:inc"
INLINE = (64 << 10, 16 << 20)


class W1:
    """One coordinator's state, store and observers, and two simulated workers."""

    def __init__(self, n: int, folder: Path) -> None:
        self.n = n
        self.now = 1000.0
        self.store = SqliteStore(folder / "w1.db")
        self.core = Scheduler()
        self.metrics = Metrics()
        self.usage = UsageBook(sink=self.metrics)
        self.observer = Observer(
            lambda: self.core, lambda: self.now, sink=AttemptLog(self.metrics), usage=self.usage
        )
        self.write_s = 0.0
        chunks = [
            (StoredRef(f"submit/{FLOW[:16]}/{i:04d}-items", 40_000, bytes(16), 0), count)
            for i, count in enumerate(min(4096, n - start) for start in range(0, n, 4096))
        ]
        items = Arg("x", ArgKind.LITERAL_ITEMS, StoredItems(chunks), True)
        for worker in ("w0", "w1"):
            self.core.register_worker(worker, {"cpu": 1.0}, frozenset([TASK]), self.now)
        self.core.submit(FLOW, "w1_map", [NodeSpec(TASK, True, [items], {"cpu": 1.0})], self.now)
        self.commit()
        #: {worker: its lease answer not yet reported (serialized), or None}
        self.pending: dict[str, bytes | None] = {"w0": None, "w1": None}

    def commit(self) -> None:
        batch = changes_to_batch(self.core.drain_changes())
        started = time.process_time()
        self.store.write(batch)
        self.write_s += time.process_time() - started

    def answer(self, acks: list[int], grants: list) -> bytes:
        response = ws.ReportOutcomesResponse(acks=acks)
        convert.add_leases(response.leases, grants, *INLINE)
        return response.SerializeToString()

    def report_of(self, worker: str, answer: bytes) -> bytes:
        """What the worker sends back: every lease of ``answer`` done, and a new lease asked."""
        leases = ws.ReportOutcomesResponse.FromString(answer).leases
        request = ws.ReportOutcomesRequest(worker_id=worker, max_new_leases=1, max_batch=512)
        for lease in leases:
            request.outcomes.add(
                task_run_id=lease.task_run_id,
                attempt=lease.attempt,
                value=b"\x80\x04K\x05.",
                cpu_seconds=2e-5,
                peak_memory_bytes=30e6 + (lease.index % 7) * 4096,
                duration_seconds=4e-5 + (lease.index % 13) * 1e-6,
            )
        return request.SerializeToString()

    def step(self, worker: str) -> float:
        """One report of ``worker`` (or its first lease); returns the CPU seconds it took."""
        self.now += 0.001
        answer = self.pending[worker]
        if answer is None:  # its first lease (the long poll), not timed
            grants = self.core.lease(worker, 1, self.now, max_batch=512)
            self.commit()
            self.pending[worker] = self.answer([], grants) if grants else None
            return 0.0
        data = self.report_of(worker, answer)
        started = time.process_time()
        request = ws.ReportOutcomesRequest.FromString(data)
        outcomes = [convert.outcome_from_proto(o) for o in request.outcomes]
        acks = self.core.report(worker, outcomes, self.now)
        self.usage.record_outcomes(self.core, request.outcomes, acks, self.now)
        grants = self.core.lease(
            worker, request.max_new_leases, self.now, max_batch=request.max_batch
        )
        self.metrics.reported(acks)
        self.commit()
        self.pending[worker] = self.answer(acks, grants) if grants else None
        self.observer.catch_up()
        return time.process_time() - started

    def run(self) -> float:
        """Run the map to its end; returns the timed CPU seconds."""
        flow = self.core.flows[FLOW]
        total = 0.0
        for _ in range(4 * self.n):  # bounded: a step ends at least one task run mostly
            if flow.terminal:
                return total
            for worker in ("w0", "w1"):
                total += self.step(worker)
        raise RuntimeError("the map did not finish")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000, help="map items")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 by own time")
    args = parser.parse_args()
    configure_logging("info")
    # As the coordinator process sets it (trees before issue 18 kept Python's default).
    gc.set_threshold(*getattr(cli, "GC_THRESHOLDS", gc.get_threshold()))
    with tempfile.TemporaryDirectory() as folder:
        w1 = W1(args.n, Path(folder))
        profile = cProfile.Profile() if args.profile else None
        if profile:
            profile.enable()
        total = w1.run()
        if profile:
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        w1.store.close()
    print(
        f"W1 at {args.n:,} in process: {total / args.n * 1e6:.2f} us of CPU per task run "
        f"(store write {w1.write_s / args.n * 1e6:.2f} us)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
