"""fleetflow.airflow with real Apache Airflow: `airflow dags test` against a real fleet.

Airflow pins its own dependency versions, so it lives in its own virtual
environment, ``.venv-airflow``, which ``.ci/run`` creates
(``python -m venv .venv-airflow && .venv-airflow/bin/pip install -e ".[airflow]"``).
These tests start a real coordinator and worker from this environment, then run
Airflow's own CLI from that one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleetflow import Client

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AIRFLOW_BIN = ROOT / ".venv-airflow" / "bin"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (AIRFLOW_BIN / "airflow").exists(),
        reason=".venv-airflow is absent: .ci/run creates it with "
        '`python -m venv .venv-airflow && .venv-airflow/bin/pip install -e ".[airflow]"` '
        "(Apache Airflow pins its own dependencies, so it has its own environment)",
    ),
]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFLOW_", "AIRFLOW"))}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("airflow-fleet")
    log = tmp / "fleet.log"
    paths = os.pathsep.join(str(ROOT / p) for p in ("client", "coordinator", "worker"))
    env = _clean_env(PYTHONPATH=paths)
    procs = []

    def start(*args: str) -> subprocess.Popen:
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    port_file = tmp / "port"
    coordinator = start(
        "-m", "fleetflow_coordinator", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
        "--db", ":memory:", "--http", "off",
    )  # fmt: skip
    give_up = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        assert coordinator.poll() is None and time.monotonic() < give_up, log.read_text()
        time.sleep(0.05)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    start(
        "-m", "fleetflow_worker", "--coordinator", address, "--cpu", "2",
        "--module", "examples.squares", "--module", str(HERE / "airflow_flows.py"),
    )  # fmt: skip
    try:
        yield address, log
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(5)


@pytest.fixture(scope="module")
def airflow(fleet, tmp_path_factory):
    """Run the Airflow CLI of .venv-airflow with a fresh home and this repo's DAGs."""
    address, _ = fleet
    home = tmp_path_factory.mktemp("airflow-home")
    env = _clean_env(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(HERE / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        FLEETFLOW_COORDINATOR=address,
        PYTHONPATH=str(ROOT),  # the DAGs name their flows as examples.squares:...
    )

    def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(AIRFLOW_BIN / "airflow"), *args],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    migrated = run("db", "migrate")
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return run


def _flow_runs(address: str, name: str) -> list:
    with Client(address) as client:
        return [r for r in client.list_flow_runs() if r.name == name]


def test_the_readme_dag_runs_a_flow_deferred(airflow, fleet):
    address, log = fleet
    dag = (HERE / "dags" / "fleetflow_squares.py").read_text().strip()
    assert dag in (ROOT / "README.md").read_text(), "the README shows this DAG verbatim"
    done = airflow("dags", "test", "fleetflow_squares")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:] + log.read_text()[-2000:]
    assert "state=success" in out, out[-5000:]
    # submitted, then deferred: the trigger, not a worker slot, waited for the flow run
    (flow_run_id,) = re.findall(r"fleetflow flow run (\w+) \(squares\) submitted", out)
    assert "Pausing task as DEFERRED" in out
    assert f"fleetflow flow run {flow_run_id}: 12 task runs completed" in out  # progress
    assert f"fleetflow flow run {flow_run_id} completed" in out
    with Client(address) as client:
        assert client.result(flow_run_id, timeout=10) == sum(i * i for i in range(10))


def test_a_failed_flow_fails_the_airflow_task_with_its_error(airflow, fleet):
    done = airflow("dags", "test", "fleetflow_failing")
    out = done.stdout + done.stderr
    assert "state=failed" in out, out[-5000:]
    assert re.search(
        r"FleetflowFlowRunError: fleetflow flow run \w+ failed: (builtins\.)?ValueError: "
        r"negative input: -3",
        out,
    ), out[-5000:]
    # the progress log names the task run (its task by its module-qualified name)
    assert re.search(r"fleetflow TASK_RUN_FAILED [\w.]+:check\[2\]", out), [
        line for line in out.splitlines() if "TASK_RUN" in line
    ][-10:]


def test_killing_the_airflow_task_cancels_the_flow_run(fleet):
    address, log = fleet
    done = subprocess.run(
        [str(AIRFLOW_BIN / "python"), str(HERE / "kill_check.py"), address],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trigger"] == "CANCELLED" and result["operator"] == "CANCELLED", result
    assert result["error"].startswith("FleetflowFlowRunError: fleetflow flow run"), result
    assert "cancelled" in result["error"]
