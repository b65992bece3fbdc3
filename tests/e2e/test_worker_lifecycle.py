"""Worker side of task lifecycle control (issues 4 and 5), with real processes.

A real coordinator and real workers on 127.0.0.1; the tasks live in
``tests/worker/lifecycle_flows.py`` and write ledgers so a test can count
attempts and see which lines of task code ran.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import wait_until

FLOWS = Path(__file__).resolve().parents[1] / "worker" / "lifecycle_flows.py"
flows = load_module(str(FLOWS))

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _failure_text(exc: BaseException) -> str:
    """An exception's message plus its notes (the remote traceback, when wrapped)."""
    return "\n".join([str(exc), *getattr(exc, "__notes__", [])])


def _events(client: Client, run_id: str, kind: str) -> list:
    return [e for e in client.watch(run_id) if e.kind == kind]


def test_a_blocking_task_is_killed_at_its_timeout_and_the_worker_carries_on(fleet, tmp_path):
    address = fleet.start_coordinator()
    worker = fleet.start_worker(module=FLOWS, cpu=1)  # one task process: it must be replaced
    ledger = tmp_path / "timeout.ledger"
    with Client(address) as client:
        warm_pid = client.submit(flows.whoami_flow).result(timeout=60)  # the worker is up
        started = time.monotonic()
        run = client.submit(flows.timeout_flow, ledger=str(ledger))
        # The coordinator may re-raise the worker's TaskTimeout or wrap it in its own
        # failure; either way the worker's message reaches the client.
        with pytest.raises(Exception) as info:
            run.result(timeout=30)
        assert time.monotonic() - started < 4.0
        assert (
            "task lifecycle_flows:sleep_past_timeout exceeded its timeout of 2 s"
            in _failure_text(info.value)
        )
        killed_pid = int(_lines(ledger)[0].split()[1])
        assert killed_pid == warm_pid
        wait_until(lambda: _gone(killed_pid), 5, what="the task process to be killed")
        next_run = client.submit(flows.whoami_flow)
        next_pid = next_run.result(timeout=30)
        assert next_pid != killed_pid, "a fresh task process took the next task"
        (timed_out_start,) = _events(client, run.id, "TASK_RUN_STARTED")
        (next_start,) = _events(client, next_run.id, "TASK_RUN_STARTED")
        assert next_start.worker_id == timed_out_start.worker_id
    time.sleep(0.5)
    assert _lines(ledger) == [f"start {killed_pid}"], "no line after the sleep ever ran"
    assert worker.alive()


def test_retries_apply_to_timeouts(fleet, tmp_path):
    address = fleet.start_coordinator()
    fleet.start_worker(module=FLOWS, cpu=1)
    ledger = tmp_path / "retries.ledger"
    with Client(address) as client:
        run = client.submit(flows.timeout_retries_flow, ledger=str(ledger))
        with pytest.raises(Exception) as info:
            run.result(timeout=60)
        assert "task lifecycle_flows:always_too_slow exceeded its timeout of 1 s" in _failure_text(
            info.value
        )
        assert len(_events(client, run.id, "TASK_RUN_STARTED")) == 4
    starts = _lines(ledger)
    assert len(starts) == 4 and "after" not in starts
    assert len(set(starts)) == 4, "each attempt ran in a new process"


def test_a_timed_out_task_run_ends_timed_out(fleet, tmp_path):
    address = fleet.start_coordinator()
    fleet.start_worker(module=FLOWS, cpu=1)
    with Client(address) as client:
        run = client.submit(flows.timeout_flow, ledger=str(tmp_path / "ledger"))
        run.wait(timeout=30)
        (node,) = client.get(run.id).nodes
        assert node.timed_out == 1 and node.failed == 0
        errors = [e.error for e in client.watch(run.id) if e.task_run_id and e.error]
        assert [e.type for e in errors] == ["fleetflow_worker.errors.TaskTimeout"]


def test_heartbeats_flow_while_task_processes_use_every_cpu(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=3.0, heartbeat=0.5)
    fleet.start_worker(module=FLOWS, cpu=2)
    ledger = tmp_path / "spin.ledger"
    with Client(address) as client:
        client.submit(flows.whoami_flow).result(timeout=60)  # the worker is up
        run = client.submit(flows.saturate, ledger=str(ledger), n=2, seconds=8.0)
        assert run.result(timeout=60) == [0, 1]
        kinds = [e.kind for e in client.watch(run.id)]
    assert kinds.count("TASK_RUN_STARTED") == 2
    assert "TASK_RUN_LEASE_EXPIRED" not in kinds and "LATE_RESULT_REJECTED" not in kinds
    starts = _lines(ledger)
    assert len(starts) == 2 and starts[0].split()[2] != starts[1].split()[2], "ran side by side"


def test_a_task_past_its_memory_request_is_killed_and_the_worker_survives(fleet):
    address = fleet.start_coordinator()
    worker = fleet.start_worker(module=FLOWS, cpu=2)
    with Client(address) as client:
        client.submit(flows.whoami_flow).result(timeout=60)
        started = time.monotonic()
        run = client.submit(flows.hog_flow, mib=300, hold_s=6.0)
        with pytest.raises(Exception) as info:
            run.result(timeout=30)
        assert time.monotonic() - started < 5.0
        assert "exceeded its memory request of 100 MiB" in _failure_text(info.value)
        assert isinstance(client.submit(flows.whoami_flow).result(timeout=30), int)
    assert worker.alive()


def test_sigterm_lets_a_running_task_finish_and_exits_0(fleet, tmp_path):
    address = fleet.start_coordinator()
    worker = fleet.start_worker("--drain-grace", "20", module=FLOWS, cpu=1)
    ledger = tmp_path / "drain.ledger"
    with Client(address) as client:
        run = client.submit(flows.slow_first_flow, ledger=str(ledger), seconds=2.0)
        wait_until(lambda: _lines(ledger), 30, what="the task to start")
        worker.kill(signal.SIGTERM)
        assert worker.popen.wait(timeout=15) == 0
        assert run.result(timeout=10) == int(_lines(ledger)[0].split()[1])
    assert len(_lines(ledger)) == 1


def test_sigterm_hands_back_a_task_outliving_the_grace_period_at_once(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=30.0)  # a re-queue after the TTL would be late
    first = fleet.start_worker("--drain-grace", "1", module=FLOWS, cpu=1)
    ledger = tmp_path / "handback.ledger"
    with Client(address) as client:
        run = client.submit(flows.slow_first_flow, ledger=str(ledger), seconds=60.0)
        wait_until(lambda: _lines(ledger), 30, what="the first attempt to start")
        fleet.start_worker(module=FLOWS, cpu=1)
        client.submit(flows.whoami_flow).result(timeout=60)  # the second worker is up
        first.kill(signal.SIGTERM)
        stopped = time.monotonic()
        assert first.popen.wait(timeout=15) == 0
        pid = run.result(timeout=20)
        assert time.monotonic() - stopped < 1.0 + 5.0  # grace + slack, far below the TTL
    starts = _lines(ledger)
    assert len(starts) == 2 and starts[0] != starts[1]
    assert starts[1] == f"start {pid}"
    assert _gone(int(starts[0].split()[1])), "the first attempt's process was killed"


def test_sigterm_releases_leases_with_release_leases(fleet, tmp_path):
    address = fleet.start_coordinator(lease_ttl=30.0)
    worker = fleet.start_worker("--drain-grace", "0.5", module=FLOWS, cpu=1)
    ledger = tmp_path / "release.ledger"
    with Client(address) as client:
        run = client.submit(flows.slow_first_flow, ledger=str(ledger), seconds=60.0)
        wait_until(lambda: _lines(ledger), 30, what="the task to start")
        worker.kill(signal.SIGTERM)
        assert worker.popen.wait(timeout=15) == 0
        assert '"leases_released"' in worker.log()
        wait_until(lambda: client.get(run.id).nodes[0].scheduled == 1, 5, what="re-queue")


def test_cancel_kills_the_running_task_process(fleet, tmp_path):
    address = fleet.start_coordinator()
    worker = fleet.start_worker(module=FLOWS, cpu=1)
    ledger = tmp_path / "cancel.ledger"
    with Client(address) as client:
        run = client.submit(flows.slow_first_flow, ledger=str(ledger), seconds=60.0)
        wait_until(lambda: _lines(ledger), 30, what="the task to start")
        pid = int(_lines(ledger)[0].split()[1])
        client.cancel(run.id)
        wait_until(lambda: _gone(pid), 5, what="the task process to be killed")
        assert run.wait(timeout=10) == "CANCELLED"
        assert client.submit(flows.whoami_flow).result(timeout=30) != pid
    assert worker.alive()
