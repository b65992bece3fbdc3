"""Issue 5 with real processes: cancellation, retry policies, concurrency limits."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from fleetflow import Client, FlowRunCancelled, NonRetryableError
from fleetflow.loader import load_module

from .fleet import FLOWS, wait_until

flows = load_module(str(FLOWS))
pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_cancel_reaches_running_tasks_and_nothing_new_starts(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=3.0, heartbeat=0.3)
    fleet.start_worker(cpu=2)
    fleet.start_worker(cpu=2)
    ledger = tmp_path / "ledger"
    with Client(address) as client:
        run = client.submit(flows.chain_and_map, ledger=str(ledger), seconds=1.5)
        # Cancel while a task runs: wait for one to start (workers start slowly on a
        # loaded machine, so a fixed sleep could cancel before anything ran).
        wait_until(
            lambda: any(line[0] == "start" for line in _lines(ledger)), 60, what="a task to start"
        )
        client.cancel(run.id)
        acked = time.time()
        with pytest.raises(FlowRunCancelled):
            run.result(timeout=5)
        assert time.time() - acked < 5
        assert client.get(run.id).state == "CANCELLED"
        events = list(client.watch(run.id))
        time.sleep(1.5)  # anything still running would write its end line by now
    lines = _lines(ledger)
    starts = [line for line in lines if line[0] == "start"]
    ended = {(line[3], line[4]) for line in lines if line[0] == "end"}
    assert starts, "nothing ran before the cancel"
    # Nothing was leased after the cancel (a task process may still be starting up
    # with a lease from before it; that one is killed, checked below).
    kinds = [e.kind for e in events]
    first_cancel = kinds.index("TASK_RUN_CANCELLED")
    assert "TASK_RUN_STARTED" not in kinds[first_cancel:], "a task run started after the cancel"
    cut = [line for line in starts if (line[3], line[4]) not in ended]
    assert cut, "expected a task to be running at the cancel"
    for line in cut:  # the processes running cancelled task runs were killed
        assert not psutil.pid_exists(int(line[1])) or psutil.Process(int(line[1])).status() == (
            psutil.STATUS_ZOMBIE
        )


def test_always_failing_task_makes_four_attempts_with_steady_gaps(fleet, tmp_path):
    address = fleet.start_coordinator()
    fleet.start_worker()
    ledger = tmp_path / "ledger"
    with Client(address) as client:
        run = client.submit(flows.always_failing, ledger=str(ledger))
        with pytest.raises(ValueError, match="always"):
            run.result(timeout=60)
        assert client.get(run.id).state == "FAILED"
        info = client.get(run.id)
        task_run_id = next(e.task_run_id for e in client.watch(run.id) if e.task_run_id)
        history = client.get_task_run(task_run_id)
    starts = [float(line[1]) for line in _lines(ledger)]
    assert len(starts) == 4
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(2.0 <= gap <= 3.5 for gap in gaps), gaps
    assert [a.outcome for a in history.attempts] == ["RETRYING"] * 3 + ["FAILED"]
    assert all(a.error and a.error.message == "always" for a in history.attempts)
    assert info.failed == 1


def test_non_retryable_error_and_retry_on_fail_at_once(fleet, tmp_path):
    address = fleet.start_coordinator()
    fleet.start_worker()
    with Client(address) as client:
        ledger = tmp_path / "a"
        with pytest.raises(NonRetryableError):
            client.submit(flows.non_retryable, ledger=str(ledger)).result(timeout=30)
        assert len(_lines(ledger)) == 1
        ledger = tmp_path / "b"
        with pytest.raises(ValueError):
            client.submit(flows.retry_on_flow, ledger=str(ledger)).result(timeout=30)
        assert len(_lines(ledger)) == 1


def test_task_asking_for_a_retry_gets_its_delay(fleet, tmp_path):
    address = fleet.start_coordinator()
    fleet.start_worker()
    ledger = tmp_path / "ledger"
    with Client(address) as client:
        assert client.submit(flows.asked_retry, ledger=str(ledger)).result(timeout=30) == (
            "third time"
        )
    starts = [float(line[1]) for line in _lines(ledger)]
    assert len(starts) == 3
    assert all(0.3 <= b - a < 5.0 for a, b in zip(starts, starts[1:], strict=False))


def test_tag_limit_of_one_across_flow_runs_and_after_a_worker_is_killed(fleet, tmp_path):
    address = fleet.start_coordinator("--log-level", "info", lease_ttl=2.0, heartbeat=0.3)
    first = fleet.start_worker(cpu=4)
    ledger = tmp_path / "ledger"
    with Client(address) as client:
        client.set_concurrency_limit("warehouse", 1)
        a = client.submit(flows.tagged_map, n=4, ledger=str(ledger), seconds=0.3)
        b = client.submit(flows.tagged_map, n=4, ledger=str(ledger), seconds=0.3)
        a.result(timeout=60)
        b.result(timeout=60)
        # With a limit of 1, tagged task runs of both flow runs never overlap: the
        # ledger reads start, end, start, end, ... each end by the run that started.
        lines = _lines(ledger)
        assert [line[0] for line in lines] == ["start", "end"] * 8
        for start, end in zip(lines[::2], lines[1::2], strict=True):
            assert (start[1], start[3]) == (end[1], end[3])
        # A tagged task's worker dies: its slot comes back within the lease TTL plus
        # detection and a new task process (2 s on an idle machine; 4 s of room for load),
        # long before the dead task's 30 s would have ended.
        slow = tmp_path / "slow"
        run = client.submit(flows.tagged_map, n=2, ledger=str(slow), seconds=30)
        wait_until(lambda: _lines(slow), 30, what="the first tagged task to start")
        fleet.start_worker(cpu=4)
        time.sleep(1.0)
        first.kill(signal.SIGKILL)
        killed = time.time()
        wait_until(lambda: len(_lines(slow)) >= 2, 10, what="the next tagged task")
        assert float(_lines(slow)[1][2]) - killed <= 2.0 + 4.0
        client.cancel(run.id)


def _cli(*args: str) -> subprocess.CompletedProcess:
    import os
    import sys

    from .fleet import ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("client", "coordinator", "worker"))
    return subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_cancel_limit_prune_and_task_run_inspect(fleet, tmp_path):
    address = fleet.start_coordinator(heartbeat=0.3)
    fleet.start_worker()
    ledger = tmp_path / "ledger"
    with Client(address) as client:
        failing = client.submit(flows.always_failing, ledger=str(ledger))
        slow = client.submit(flows.slow_flow, ledger=str(tmp_path / "slow"), seconds=30)
        wait_until(lambda: _lines(tmp_path / "slow"), 30, what="the slow task to start")
        out = _cli("cancel", slow.id, "--coordinator", address)
        assert out.returncode == 0 and "1 task runs cancelled" in out.stdout, out.stderr
        assert client.get(slow.id).state == "CANCELLED"
        with pytest.raises(ValueError):
            failing.result(timeout=60)
        task_run_id = next(e.task_run_id for e in client.watch(failing.id) if e.task_run_id)
        out = _cli("inspect", str(task_run_id), "--coordinator", address, "--json")
        assert out.returncode == 1, out.stderr  # the task run failed
        import json

        data = json.loads(out.stdout)
        assert [a["outcome"] for a in data["attempts"]] == ["RETRYING"] * 3 + ["FAILED"]
        out = _cli("limit", "warehouse", "2", "--coordinator", address)
        assert out.returncode == 0 and "warehouse: 2" in out.stdout
        assert _cli("limit", "warehouse", "--coordinator", address).returncode != 0
        out = _cli("prune", "--older-than", "0", "--coordinator", address)
        assert out.returncode == 0 and "pruned 2 flow runs" in out.stdout, out.stdout
        assert client.list_flow_runs() == []


def test_flow_run_timeout_ends_it_failed_and_stops_its_tasks(fleet, tmp_path):
    address = fleet.start_coordinator(heartbeat=0.3)
    fleet.start_worker(cpu=2)
    ledger = tmp_path / "ledger"
    with Client(address) as client:
        started = time.monotonic()
        run = client.submit(flows.slow_with_flow_timeout, ledger=str(ledger))
        with pytest.raises(Exception, match="flow run timed out after 3 s"):
            run.result(timeout=30)
        assert time.monotonic() - started < 3.0 + 2.0
        info = client.get(run.id)
        assert info.state == "FAILED"
        time.sleep(2.5)  # a task still running would have written its end line by now
    assert not [line for line in _lines(ledger) if line[0] == "end"]
