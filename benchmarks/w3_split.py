"""Where a one-task flow's round trip (W3) goes, from the coordinator's own event times.

    .venv/bin/python benchmarks/w3_split.py [--n 200] [--api run|submit|both]

Starts a fleet as ``run.py`` does (coordinator + 2 workers ``--cpu 1``), runs
``--n`` one-task flows in sequence, then reads each flow run's events and
prints p50/p90 of: client call start to the submission in the core
(TASK_RUN_SCHEDULED); submission to the lease (TASK_RUN_STARTED); lease to
the reported outcome (TASK_RUN_COMPLETED: the lease's commit and answer, the
worker, the report's request); and outcome to the client holding the result
(the commit, the answer). ``--api run`` (default) calls ``client.run``, which
submits and waits in one call, as W3 does since issue 18; ``--api submit``
calls ``client.submit(...).result()`` (two calls) and also prints the
SubmitFlowRun call as the client sees it; ``--api both`` alternates the two
flow by flow on one fleet (so a change in the machine's load falls on both)
and prints each. Client and coordinator share the machine's clock.
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
    parser.add_argument("--api", choices=("run", "submit", "both"), default="run")
    args = parser.parse_args()
    logdir = OUT / "w3_split"
    logdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(logdir, "fleet")
    try:
        fleet.start()
        client = fleet.client
        for i in range(20):  # warm-up
            client.submit(ff_tasks.w3_one, x=i).result(timeout=60)
            client.run(ff_tasks.w3_one, x=i, timeout=60)
        runs = []
        for i in range(args.n):
            key = f"w3-split-{i}-{time.monotonic_ns()}"
            api = args.api if args.api != "both" else ("run", "submit")[i % 2]
            t0 = time.time()
            if api == "run":
                assert client.run(ff_tasks.w3_one, x=i, idempotency_key=key, timeout=60) == i + 1
                t1 = t2 = time.time()
            else:
                handle = client.submit(ff_tasks.w3_one, x=i, idempotency_key=key)
                t1 = time.time()
                assert handle.result(timeout=60) == i + 1
                t2 = time.time()
            runs.append((key, i, api, t0, t1, t2))
        rows: dict[str, list[dict]] = {}
        for key, i, api, t0, t1, t2 in runs:
            # the same key again finds the flow run (after the timing)
            flow_run_id = client.submit(ff_tasks.w3_one, x=i, idempotency_key=key).id
            at = {e.kind: e.time for e in client.watch(flow_run_id)}
            split = {"SubmitFlowRun call": t1 - t0} if api == "submit" else {}
            rows.setdefault(api, []).append(
                {
                    **split,
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
    for api, api_rows in rows.items():
        print(f"W3 split over {len(api_rows)} one-task flows ({api}), ms:")
        for key in api_rows[0]:
            values = sorted(r[key] * 1000 for r in api_rows)
            p90 = values[int(0.9 * len(values))]
            print(f"  {key:34s} p50 {statistics.median(values):7.3f}  p90 {p90:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
