"""Coordinator CPU of a worker's hot path: unary LeaseTasks/ReportOutcomes against WorkerSession.

    .venv/bin/python benchmarks/worker_path.py [--cycles 2000] [--reps 3]

Starts one coordinator (``--db :memory:``, no dashboard) and drives it from
this process as one worker would, with no task processes and no client
library: each cycle submits a one-task flow run (unary SubmitFlowRun, the same
in both modes), leases it and reports its outcome (with a piggybacked lease
ask, as workers do). The lease and the report go either as unary calls or as
messages of one WorkerSession stream (the worker's own ``SessionStub``).
Modes alternate, so a change in the machine's load falls on both; the
coordinator's CPU per cycle comes from psutil, this process's from
``time.process_time``. One JSON line per repetition, then medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import statistics
import subprocess
import sys
import time

import psutil
from common import OUT, ROOT, wait_until
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow_worker._rpc import CoordinatorConnection
from fleetflow_worker._session import SessionStub

SPEC = common_pb2.FlowSpec(
    name="worker_path",
    nodes=[common_pb2.TaskNode(task_name="t", resources={"amounts": {"cpu": 1.0}})],
    output_node=0,
)
DONE = pickle.dumps(1)


async def _cycles(address: str, mode: str, n: int, pid: int) -> dict:
    connection = CoordinatorConnection(address, [])
    stub = SessionStub(connection, enabled=mode == "session")
    submit = cs_grpc.CoordinatorServiceStub(connection.current_channel()).SubmitFlowRun
    worker = f"w-{mode}"
    register = ws.RegisterWorkerRequest(
        worker_id=worker, task_names=["t"], capacity={"amounts": {"cpu": 1.0}}
    )
    await stub.RegisterWorker(register, timeout=10)
    lease = ws.LeaseTasksRequest(worker_id=worker, max_task_runs=1, wait_seconds=5.0)

    async def one() -> None:
        await submit(cs.SubmitFlowRunRequest(spec=SPEC), timeout=10)
        [granted] = (await stub.LeaseTasks(lease, timeout=10)).leases
        outcome = ws.Outcome(task_run_id=granted.task_run_id, attempt=granted.attempt, value=DONE)
        report = ws.ReportOutcomesRequest(worker_id=worker, outcomes=[outcome], max_new_leases=1)
        acks = (await stub.ReportOutcomes(report, timeout=10)).acks
        assert list(acks) == [ws.OUTCOME_ACK_ACCEPTED]

    for _ in range(50):  # warm-up
        await one()
    coordinator = psutil.Process(pid)
    c0, p0, t0 = sum(coordinator.cpu_times()[:2]), time.process_time(), time.perf_counter()
    for _ in range(n):
        await one()
    c1, p1, t1 = sum(coordinator.cpu_times()[:2]), time.process_time(), time.perf_counter()
    on_session = stub.on_session
    await stub.close()
    await connection.close()
    assert on_session == (mode == "session")
    return {
        "mode": mode,
        "coordinator_cpu_us": (c1 - c0) / n * 1e6,
        "driver_cpu_us": (p1 - p0) / n * 1e6,
        "cycle_ms": (t1 - t0) / n * 1e3,
        "load1": psutil.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    out = OUT / "worker_path"
    out.mkdir(parents=True, exist_ok=True)
    port_file = out / "port"
    port_file.unlink(missing_ok=True)
    with open(out / "coordinator.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0",
             "--port-file", str(port_file), "--db", ":memory:", "--http", "off",
             "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    rows = []
    try:
        wait_until(port_file.exists, 30, what="the coordinator to start")
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        order = ["unary", "session"]
        for rep in range(args.reps):
            for mode in order if rep % 2 == 0 else order[::-1]:
                row = asyncio.run(_cycles(address, mode, args.cycles, proc.pid))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(15)
    print("\nmedians (min-max):")
    for mode in ("unary", "session"):
        mine = [r for r in rows if r["mode"] == mode]
        parts = []
        for key in ("coordinator_cpu_us", "driver_cpu_us", "cycle_ms", "load1"):
            values = [r[key] for r in mine]
            parts.append(f"{key}={statistics.median(values):.3g} "
                         f"({min(values):.3g}-{max(values):.3g})")  # fmt: skip
        print(f"{mode}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
