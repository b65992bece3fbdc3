"""Issue 17 from the CLI, against real coordinator and worker processes.

Sizes are modest on purpose (CI budget): 400 task runs of which 20 fail.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import ROOT, _env, fleetflow, wait_until

pytestmark = pytest.mark.slow

VIEW_FLOWS = ROOT / "tests" / "e2e" / "view_flows.py"
flows = load_module(str(VIEW_FLOWS))


def _failed_run(fleet, n: int = 400, every: int = 20):
    address = fleet.start_coordinator()
    fleet.start_worker(module=VIEW_FLOWS)
    with Client(address) as client:
        wait_until(lambda: len(client.list_workers()) == 1, 30, what="a worker")
        run = client.submit(flows.some_fail, n=n, every=every)
        assert run.wait(timeout=90) == "FAILED"
    return address, run.id


def test_counts_failed_list_and_task_refs(fleet):
    address, flow_run_id = _failed_run(fleet)

    # Item 5: the sum that never ran is counted upstream failed, not "0/?".
    data = json.loads(
        fleetflow("inspect", flow_run_id, "--coordinator", address, "--json", check=False).stdout
    )
    check, total = data["nodes"]
    assert check["failed"] == 20 and check["completed"] == 380
    assert total["upstream_failed"] == 1 and total["total"] == 1
    assert total["unexpanded_end"] == "UPSTREAM_FAILED"
    assert data["failed"] == 20 and data["upstream_failed"] == 1 and data["cancelled"] == 0
    view = fleetflow("inspect", flow_run_id, "--coordinator", address, check=False).stdout
    assert "380 completed, 20 failed, 1 upstream failed" in view
    assert f"fleetflow inspect {flow_run_id} --failed" in view
    runs = fleetflow("flow-runs", "--coordinator", address).stdout
    assert "upstream failed" in runs and "cancelled" in runs

    # Item 2: every failed task run, paged, with ids, indexes, inputs and errors.
    first = json.loads(
        fleetflow(
            "inspect", flow_run_id, "--failed", "--limit", "15", "--coordinator", address, "--json"
        ).stdout
    )
    second = json.loads(
        fleetflow(
            "inspect",
            flow_run_id,
            "--failed",
            "--limit",
            "15",
            "--offset",
            "15",
            "--coordinator",
            address,
            "--json",
        ).stdout
    )
    assert first["total"] == second["total"] == 20
    rows = first["task_runs"] + second["task_runs"]
    assert [r["index"] for r in rows] == list(range(0, 400, 20))
    assert len({r["task_run_id"] for r in rows}) == 20
    assert all(r["error"] == f"ValueError: item {r['index']} is bad" for r in rows), json.dumps(
        rows[:2]
    )
    assert all(r["input"] == f"i={r['index']}" for r in rows), rows[:2]
    table = fleetflow(
        "inspect", flow_run_id, "--failed", "--limit", "5", "--coordinator", address
    ).stdout
    assert "failed task runs 1-5 of 20" in table and "view_flows:check[20]" in table
    assert "--offset 5" in table

    # FLOW_RUN_ID:TASK[INDEX] and the task run id lead to the same task run.
    by_ref = json.loads(
        fleetflow(
            "inspect", f"{flow_run_id}:check[40]", "--coordinator", address, "--json", check=False
        ).stdout
    )
    assert by_ref["index"] == 40 and by_ref["state"] == "FAILED"
    assert by_ref["task_run_id"] == rows[2]["task_run_id"]
    # The task's full name (module:qualname) works as well as the part after ':'.
    by_name = json.loads(
        fleetflow(
            "inspect",
            f"{flow_run_id}:view_flows:check[40]",
            "--coordinator",
            address,
            "--json",
            check=False,
        ).stdout
    )
    assert by_name["task_run_id"] == by_ref["task_run_id"]
    missing = fleetflow(
        "inspect", f"{flow_run_id}:check[4000]", "--coordinator", address, check=False
    )
    assert missing.returncode == 1 and "no task run check[4000]" in missing.stderr

    # watch --events names the task run next to the map index.
    events = fleetflow(
        "watch", flow_run_id, "--events", "--coordinator", address, check=False
    ).stdout
    assert f"view_flows:check[40] task_run={rows[2]['task_run_id']}" in events


def test_a_page_over_500_is_refused(fleet):
    address, flow_run_id = _failed_run(fleet, n=40, every=10)
    from fleetflow.errors import FleetflowError

    with Client(address) as client:
        with pytest.raises(FleetflowError, match="over the limit of 500"):
            client.list_task_runs(flow_run_id, limit=501)
        page = client.list_task_runs(flow_run_id, states=["COMPLETED"], offset=30, limit=500)
        assert page.total == 36 and len(page.task_runs) == 6
        assert client.list_task_runs(flow_run_id, task_name="total").task_runs == []


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``fleetflow run`` on an embedded fleet of one worker."""
    env = {**_env(), "COLUMNS": "200"}
    env.pop("FLEETFLOW_COORDINATOR", None)
    return subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", "run", *args, "--workers", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_fails_at_once_on_what_its_fleet_can_never_run():
    # Item 1: a gpu=1 task on a fleet without GPUs fails within seconds, with the reason.
    started = time.monotonic()
    done = _run(f"{VIEW_FLOWS}:wants_gpu")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "needs gpu=1; the largest worker offers 0" in done.stderr, done.stderr[-3000:]
    # the run's own deadline before was 300 s; generous for a loaded CI machine
    assert time.monotonic() - started < 60
    # A pool no worker serves: the same, naming the task and the pool.
    done = _run(f"{VIEW_FLOWS}:wants_pool")
    assert done.returncode == 1
    assert "no connected worker offers task 'view_flows:elsewhere' in pool 'nowhere'" in done.stderr
    # --resource and --pool give the embedded workers what the tasks need.
    done = _run(f"{VIEW_FLOWS}:wants_gpu", "--resource", "gpu=1", "--keep-logs")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "1"
    kept = re.search(r"fleet logs: (\S+) \(folder (\S+)\)", done.stderr)
    assert kept is not None and Path(kept[1]).is_file()
    shutil.rmtree(kept[2])
    done = _run(f"{VIEW_FLOWS}:wants_pool", "--pool", "nowhere")
    assert done.returncode == 0, done.stderr[-3000:]


def test_ctrl_c_cancels_the_flow_run_it_started(fleet, tmp_path):
    address = fleet.start_coordinator()
    fleet.start_worker(module=VIEW_FLOWS)
    stderr_path = tmp_path / "run.err"
    env = {**_env(), "COLUMNS": "200"}
    # An ignored SIGINT would stay ignored in the CLI (tests/conftest.py sees to it).
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                *("-X", "faulthandler"),  # SIGABRT below prints where it is stuck
                "-m",
                "fleetflow.cli",
                "run",
                f"{VIEW_FLOWS}:naps",
                "-p",
                "n=4",
                "-p",
                "seconds=60",
                "--coordinator",
                address,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        found = wait_until(
            lambda: re.search(r"flow run (\w+) \(naps\) submitted", stderr_path.read_text()),
            60,
            what="the flow run to be submitted",
        )
        flow_run_id = found[1]
        with Client(address) as client:
            wait_until(lambda: client.get(flow_run_id).nodes[0].running > 0, 30, what="running")
            proc.send_signal(signal.SIGINT)
            assert _exit_status(proc, 30, stderr_path) == 130
            text = stderr_path.read_text()
            assert f"cancelled flow run {flow_run_id}" in text, text[-2000:]
            assert client.get(flow_run_id).state == "CANCELLED"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _exit_status(proc: subprocess.Popen, timeout_s: float, stderr_path: Path) -> int:
    """Its exit status; a process still running after ``timeout_s`` fails the test.

    Run with ``-X faulthandler``, it is sent SIGABRT first, so that the
    failure shows where each of its threads was stuck.
    """
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        raise AssertionError(
            f"still running {timeout_s:g} s after SIGINT; its stderr:\n"
            + stderr_path.read_text(errors="replace")[-6000:]
        ) from None


def test_limits_are_listed_stored_and_shown_in_queue_and_usage_survives(fleet):
    # Item 4, modest: 6 tasks tagged "warehouse" under a limit of 1 (12 s of them one
    # after another: the three CLI calls below take seconds each on a loaded machine).
    address = fleet.start_coordinator()
    fleet.start_worker(module=VIEW_FLOWS, cpu=4)
    fleetflow("limit", "warehouse", "1", "--coordinator", address)
    with Client(address) as client:
        wait_until(lambda: len(client.list_workers()) == 1, 30, what="a worker")
        measured = client.submit(flows.some_fail, n=20, every=0)  # plain def tasks: measured
        assert measured.wait(timeout=60) == "COMPLETED"
        run = client.submit(flows.warehouse_loads, n=6, seconds=2.0)
        wait_until(lambda: client.get(run.id).nodes[0].running == 1, 30, what="one running")
        queue = json.loads(fleetflow("queue", "--json", "--coordinator", address).stdout)
        waits = [w for d in queue for w in d["waiting_on_limits"]]
        assert waits == ["warehouse (1/1 running)"], queue
        assert "warehouse (1/1 running)" in fleetflow("queue", "--coordinator", address).stdout
        listed = json.loads(fleetflow("limit", "--list", "--json", "--coordinator", address).stdout)
        # (queued ones may have been leased since, as one batch holding the slot)
        assert [(x["tag"], x["limit"], x["running"], x["source"]) for x in listed] == [
            ("warehouse", 1, 1, "api")
        ]
        assert run.wait(timeout=60) == "COMPLETED"
        usage_before = client.get_flow_run_stats(measured.id).tasks
        assert usage_before and usage_before[0].measured_attempts == 20

    # A restart (SIGTERM, then the same database) keeps both.
    port = address.rpartition(":")[2]
    fleet.coordinator.stop()
    address = fleet.start_coordinator(port=int(port), db=fleet.db)
    listed = json.loads(fleetflow("limit", "--list", "--json", "--coordinator", address).stdout)
    assert [(x["tag"], x["limit"], x["source"]) for x in listed] == [("warehouse", 1, "api")]
    table = fleetflow("limit", "--list", "--coordinator", address).stdout
    assert "warehouse" in table and "api" in table
    with Client(address) as client:
        usage_after = client.get_flow_run_stats(measured.id).tasks
    assert [(t.task_name, t.measured_attempts) for t in usage_after] == [
        (t.task_name, t.measured_attempts) for t in usage_before
    ]
    fleetflow("limit", "warehouse", "--remove", "--coordinator", address)
    assert fleetflow("limit", "--list", "--coordinator", address).stdout.strip() == (
        "no concurrency limits are set"
    )


def test_a_failed_run_lists_its_failed_task_runs_with_ids(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(module=VIEW_FLOWS)
    done = fleetflow(
        "run", f"{VIEW_FLOWS}:some_fail", "-p", "n=40", "-p", "every=10",
        "--coordinator", address, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "36 completed, 4 failed, 1 upstream failed" in done.stderr, done.stderr[-3000:]
    assert "failed task runs (4 of 4):" in done.stderr
    listed = re.findall(r"task run (\d+)  \S*check\[(\d+)\]  \(i=\d+\)  ValueError", done.stderr)
    assert [int(i) for _, i in listed] == [0, 10, 20, 30]
    assert "fleetflow inspect" in done.stderr and "--failed" in done.stderr


def test_watch_prints_plain_progress_lines_when_not_a_terminal(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(module=VIEW_FLOWS)
    with Client(address) as client:
        run = client.submit(flows.naps, n=4, seconds=1.0)
        done = fleetflow("watch", run.id, "--coordinator", address)  # output captured: no TTY
    lines = [line for line in done.stdout.splitlines() if " naps " in line]
    assert any("RUNNING" in line for line in lines), done.stdout[-2000:]
    assert "naps COMPLETED: 5/5 done, 0 running; 5 completed, 0 failed" in lines[-1]
