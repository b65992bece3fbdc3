"""Measured usage, right-sizing advice, time in state, task logs: real coordinator and workers."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import fleetflow, wait_until

pytestmark = pytest.mark.slow

USAGE_FLOWS = Path(__file__).resolve().parent / "usage_flows.py"
flows = load_module(str(USAGE_FLOWS))

IDS = ("flow_run_id", "task_run_id", "attempt", "worker_id")
MB = 1_000_000


def json_lines(text: str) -> list[dict]:
    """The structlog JSON lines of a process log (other output is skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_a_200_mb_task_reports_its_peak_and_gets_advice(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker("--memory", "8Gi", module=USAGE_FLOWS, cpu=2)
    with Client(address) as client:
        run = client.submit(flows.sized, n=3, megabytes=200)
        # `fleetflow watch` follows it (piped: plain progress lines), then prints where
        # each task ended, one line per task as the terminal's bars show, and the outcome.
        watched = fleetflow("watch", run.id, "--coordinator", address)
        assert run.result(timeout=90) == [[200, 200, 200], [0, 2, 4]]
    lines = watched.stdout
    assert "sized COMPLETED: 7/7 done" in lines, lines
    assert "  0 usage_flows:hog (map): 3/3 done; 3 completed, 0 failed" in lines, lines
    assert "  1 usage_flows:small (map): 3/3 done; 3 completed, 0 failed" in lines, lines
    assert "  2 usage_flows:pair: 1/1 done; 1 completed, 0 failed" in lines, lines
    assert f"flow run {run.id} COMPLETED" in lines, lines
    events = fleetflow("watch", run.id, "--events", "--coordinator", address).stdout
    assert "TASK_RUN_STARTED" in events and events.rstrip().endswith("FLOW_RUN_COMPLETED")
    listed = json.loads(fleetflow("flow-runs", "--json", "--coordinator", address).stdout)
    assert [(r["flow_run_id"], r["state"], r["total"]) for r in listed] == [
        (run.id, "COMPLETED", 7)
    ]

    data = json.loads(fleetflow("inspect", run.id, "--coordinator", address, "--json").stdout)
    usage = {row["task_name"]: row for row in data["usage"]}
    hog, small = usage["usage_flows:hog"], usage["usage_flows:small"]
    assert hog["measured_attempts"] == 3 and small["measured_attempts"] == 3
    peak = hog["peak_memory_bytes"]
    assert 150 * MB <= peak["median"] <= peak["p95"] <= peak["max"] <= 400 * MB, peak
    assert hog["requested"] == {"cpu": 1.0, "memory": 2.0 * 2**30}
    assert hog["cpu_seconds"]["max"] > 0 and hog["duration_seconds"]["median"] >= 0.3
    memory_advice = [a for a in hog["advice"] if a["resource"] == "memory"]
    assert len(memory_advice) == 1, hog["advice"]
    advice = memory_advice[0]
    assert advice["requested"] == 2.0 * 2**30 and advice["suggested"] < 2**30
    assert advice["suggested"] >= advice["used_p95"] * 1.25
    assert advice["message"].startswith("usage_flows:hog requests memory 2GiB, p95 used ")
    assert advice["message"] in data["advice"]
    assert not [a for a in small["advice"] if a["resource"] == "memory"], small["advice"]
    assert small["peak_memory_bytes"]["max"] < 150 * MB
    assert {row["task_name"] for row in data["fleet_usage"]} == {
        "usage_flows:hog",
        "usage_flows:small",
    }
    assert "pair" not in usage  # async def: not measured

    time_in_state = data["time_in_state"]
    assert set(time_in_state) == {"pending_s", "queued_s", "running_s", "awaiting_retry_s"}
    # Three hogs held their memory for at least 0.3 s each.
    assert time_in_state["running_s"] >= 0.9
    assert time_in_state["awaiting_retry_s"] == 0

    view = fleetflow("inspect", run.id, "--coordinator", address).stdout
    assert "requested vs used" in view and "where time went" in view
    assert "advice: usage_flows:hog requests memory 2GiB" in view

    # The dashboard shows the same rows for the flow run.
    import urllib.request

    with urllib.request.urlopen(f"{fleet.http_url}/api/flow-runs/{run.id}", timeout=10) as r:
        detail = json.loads(r.read())
    rows = {row["task_name"]: row for row in detail["usage"]}
    assert rows["usage_flows:hog"]["advice"][0]["message"].startswith(
        "usage_flows:hog requests memory 2GiB"
    )
    assert detail["time_in_state"]["running"] >= 0.9


def test_a_captured_run_has_the_ids_on_every_line_and_one_summary_line_per_attempt(fleet):
    address = fleet.start_coordinator("--log-level", "debug")
    worker = fleet.start_worker(module=USAGE_FLOWS, cpu=2)
    with Client(address) as client:
        run = client.submit(flows.logged, n=3)
        assert run.result(timeout=90) == [[0, 1, 2], [0, 1, 2]]
        failed = client.submit(flows.logged_failure)
        with pytest.raises(Exception) as caught:
            failed.result(timeout=90)
        started = {
            (e.task_run_id, e.attempt)
            for flow_run_id in (run.id, failed.id)
            for e in client.watch(flow_run_id)
            if e.kind == "TASK_RUN_STARTED"
        }
        workers = {w.worker_id for w in client.list_workers()}
    assert len(started) == 8 and len(workers) == 1
    (worker_id,) = workers

    # The failure's last log lines reach the client's exception, under its traceback.
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "does not parse" in str(caught.value)
    assert "Remote traceback" in notes and "Last log lines of the failed attempt:" in notes
    (note,) = [n for n in caught.value.__notes__ if n.startswith("Last log lines")]
    tail = note.splitlines()[1:]
    assert len(tail) == 20, caught.value.__notes__
    assert "chatty_giving_up" in tail[-1] and "step=24" in tail[-2]
    # 25 steps and the giving-up line were logged: the last 20 are steps 6 to 24 and it.
    assert tail[0].endswith("chatty_step item=7 step=6"), tail[0]
    assert all("flow_run_id" not in line for line in tail)

    watched = fleetflow("watch", failed.id, "--coordinator", address, check=False)
    assert watched.returncode == 1
    assert "FAILED" in watched.stdout and "item 7 does not parse" in watched.stdout
    assert "Last log lines of the failed attempt:" in watched.stdout

    # Drain the worker (SIGTERM) so that everything it logged is in its file.
    worker.kill(signal.SIGTERM)
    assert worker.popen.wait(30) == 0
    lines = json_lines(worker.log())
    assert lines, worker.log()[-2000:]
    about_a_task = [line for line in lines if "task_run_id" in line]
    for line in about_a_task:
        missing = [k for k in IDS if line.get(k) in (None, "")]
        assert not missing, (missing, line)
        assert line["worker_id"] == worker_id
        assert line["flow_run_id"] in (run.id, failed.id)
    task_lines = [line for line in lines if line["event"].startswith("chatty")]
    # 3 x 25 + 25 steps and one giving-up line from task processes, 3 from async tasks.
    assert len(task_lines) == 3 * 25 + 26 + 3
    assert all(all(k in line for k in IDS) for line in task_lines)
    assert all(
        line["task_name"] in ("usage_flows:chatty", "usage_flows:chatty_async")
        for line in task_lines
    )

    # One summary per attempt: its own line, or (a completed member of a
    # lease batch of short task runs) its entry in its batch's line.
    summaries = Counter(
        (line["task_run_id"], line["attempt"])
        for line in lines
        if line["event"] == "task_run_finished"
    )
    for line in lines:
        if line["event"] == "task_run_batch_finished":
            summaries.update((tid, attempt) for tid, attempt in line["task_runs"])
    assert set(summaries) == started and set(summaries.values()) == {1}

    wait_until(
        lambda: fleet.coordinator.log().count("task_run_attempt_ended") >= 8,
        10,
        what="the coordinator's summary lines",
    )
    coordinator_lines = json_lines(fleet.coordinator.log())
    ended = Counter(
        (line["task_run_id"], line["attempt"])
        for line in coordinator_lines
        if line["event"] == "task_run_attempt_ended"
    )
    assert set(ended) == started and set(ended.values()) == {1}
    for line in coordinator_lines:
        if "task_run_id" in line:
            assert all(line.get(k) not in (None, "") for k in IDS), line
