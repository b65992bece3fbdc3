"""Where a one-task flow's round trip (W3) goes, from the coordinator's own event times.

    .venv/bin/python benchmarks/w3_split.py [--n 200]

Starts a fleet as ``run.py`` does (coordinator + 2 workers ``--cpu 1``), runs
``--n`` one-task flows in sequence, then reads each flow run's events and
prints p50/p90 of: the SubmitFlowRun call as the client sees it; client call
start to the submission in the core (TASK_RUN_SCHEDULED); submission to the
lease (TASK_RUN_STARTED); lease to the reported outcome (TASK_RUN_COMPLETED:
the lease's commit and answer, the worker, the report's request); and outcome
to the client holding the result (the commit, the GetFlowRun answer). Client
and coordinator share the machine's clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import ff_tasks
from common import OUT, stop_all
from ff_fleet import Fleet


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    logdir = OUT / "w3_split"
    logdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(logdir, "fleet")
    try:
        fleet.start()
        client = fleet.client
        for i in range(20):  # warm-up
            client.submit(ff_tasks.w3_one, x=i).result(timeout=60)
        runs = []
        for i in range(args.n):
            t0 = time.time()
            handle = client.submit(ff_tasks.w3_one, x=i)
            t1 = time.time()
            assert handle.result(timeout=60) == i + 1
            runs.append((handle.id, t0, t1, time.time()))
        rows = []
        for flow_run_id, t0, t1, t2 in runs:
            at = {e.kind: e.time for e in client.watch(flow_run_id)}
            rows.append(
                {
                    "SubmitFlowRun call": t1 - t0,
                    "call start -> submitted in core": at["TASK_RUN_SCHEDULED"] - t0,
                    "submitted -> leased": at["TASK_RUN_STARTED"] - at["TASK_RUN_SCHEDULED"],
                    "leased -> outcome reported": at["TASK_RUN_COMPLETED"] - at["TASK_RUN_STARTED"],
                    "outcome -> client has the result": t2 - at["TASK_RUN_COMPLETED"],
                    "round trip": t2 - t0,
                }
            )
    finally:
        fleet.stop()
        stop_all()
    print(f"W3 split over {args.n} one-task flows, ms:")
    for key in rows[0]:
        values = sorted(r[key] * 1000 for r in rows)
        p90 = values[int(0.9 * len(values))]
        print(f"  {key:34s} p50 {statistics.median(values):7.3f}  p90 {p90:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
