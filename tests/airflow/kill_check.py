"""Run by the Airflow virtual environment's Python: killing the Airflow task cancels the flow run.

Prints one JSON line: the state of the flow run cancelled through the trigger's
``on_kill`` (a deferred task cleared or marked), then of the one cancelled through
the operator's ``on_kill`` (a task killed while it runs on an Airflow worker), and
the error the operator's ``execute`` then raised.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

from fleetflow import Client
from fleetflow.airflow import FleetflowFlowRunTrigger, FleetflowRunOperator
from fleetflow.loader import load_target

FLOWS = Path(__file__).resolve().parent / "airflow_flows.py"
ADDRESS = sys.argv[1]


def wait_running(client: Client, flow_run_id: str) -> None:
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        info = client.get(flow_run_id)
        if any(n.running for n in info.nodes):
            return
        time.sleep(0.1)
    raise SystemExit(f"flow run {flow_run_id} did not start")


async def through_the_trigger() -> str:
    _, naps = load_target(f"{FLOWS}:naps")
    with Client(ADDRESS) as client:
        handle = client.submit(naps)
        wait_running(client, handle.id)
    trigger = FleetflowFlowRunTrigger(handle.id, ADDRESS, log_interval_s=0.5)
    watching = asyncio.ensure_future(anext(trigger.run()))
    await asyncio.sleep(1.0)
    assert not watching.done(), "the trigger fired before the flow run ended"
    watching.cancel()  # what the triggerer does first, then it calls on_kill
    await trigger.on_kill()
    with Client(ADDRESS) as client:
        return client.get(handle.id).state


class TaskInstance:
    """The parts of Airflow's task instance that execute() reads."""

    dag_id, run_id, task_id, map_index, try_number = "d", "r", "t", -1, 1

    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def through_the_operator() -> tuple[str, str]:
    operator = FleetflowRunOperator(
        task_id="t", flow=f"{FLOWS}:naps", coordinator=ADDRESS, deferrable=False
    )
    ti = TaskInstance()
    outcome: dict[str, BaseException] = {}

    def execute() -> None:
        try:
            operator.execute({"ti": ti})
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=execute)
    thread.start()
    give_up = time.monotonic() + 30
    while "flow_run_id" not in ti.xcom and time.monotonic() < give_up:
        time.sleep(0.05)
    with Client(ADDRESS) as client:
        wait_running(client, str(ti.xcom["flow_run_id"]))
        operator.on_kill()
        thread.join(30)
        state = client.get(str(ti.xcom["flow_run_id"])).state
    error = outcome.get("error")
    return state, f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    trigger_state = asyncio.run(through_the_trigger())
    operator_state, operator_error = through_the_operator()
    report = {"trigger": trigger_state, "operator": operator_state, "error": operator_error}
    print(json.dumps(report))
