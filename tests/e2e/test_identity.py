"""Task identity with real processes (issue 11, item 1).

Bug reports covered: tasks made by one factory (``double = make_scaler(2)``,
``triple = make_scaler(3)``) returned ``[30, 30]``; two modules that each
define a task ``process``, loaded by one worker, both ran the second one.
"""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from fleetflow import Client, flow
from fleetflow.loader import load_module

from .fleet import fleetflow, wait_until

HERE = Path(__file__).resolve().parent
# Loaded as workers load them (by path, under their stems), so task names agree.
identity_a = load_module(str(HERE / "identity_a.py"))
identity_b = load_module(str(HERE / "identity_b.py"))
identity_factory = load_module(str(HERE / "identity_factory.py"))

pytestmark = pytest.mark.slow


@flow
def process_a(x: int):
    return identity_a.process(x)


@flow
def process_b(x: int):
    return identity_b.process(x)


@flow
def doubled(x: int):
    return identity_factory.double(x)


@flow
def tripled(x: int):
    return identity_factory.triple(x)


def test_two_modules_with_a_task_of_the_same_name_each_run_their_own(fleet):
    fleet.start_coordinator()
    fleet.start_worker(
        "--module", str(HERE / "identity_b.py"), module=HERE / "identity_a.py", cpu=1
    )
    assert identity_a.process.name == "identity_a:process"
    with Client(fleet.address) as client:
        runs = [client.submit(process_a, x=7), client.submit(process_b, x=7)]
        assert [run.result(timeout=60) for run in runs] == ["a7", "b7"]


def test_factory_tasks_with_distinct_names_give_their_own_results(fleet):
    fleet.start_coordinator()
    fleet.start_worker(module=HERE / "identity_factory.py", cpu=1)
    with Client(fleet.address) as client:
        runs = [client.submit(doubled, x=10), client.submit(tripled, x=10)]
        assert [run.result(timeout=60) for run in runs] == [20, 30]


def test_a_worker_refuses_to_start_on_a_factory_without_distinct_names(fleet, tmp_path):
    bad = tmp_path / "identity_bad_factory.py"
    bad.write_text(
        textwrap.dedent(
            """\
            from fleetflow import task


            def make_scaler(factor):
                @task
                def scale(x):
                    return factor * x

                return scale


            double = make_scaler(2)
            triple = make_scaler(3)
            """
        )
    )
    fleet.start_coordinator()
    worker = fleet.start_worker(module=bad, cpu=1)
    deadline = time.monotonic() + 60
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker.alive(), "the worker started on a duplicate task name"
    assert worker.popen.returncode != 0
    log = worker.log()
    assert "identity_bad_factory:make_scaler.<locals>.scale" in log
    assert f"{bad}:5 (called from {bad}:12)" in log and f"{bad}:5 (called from {bad}:13)" in log
    assert "distinct name" in log


# ---------------------------------------------------------------- code versions

VERSIONS = HERE / "identity_versions"
# The client has the edited file; workers started earlier have the old one.
versioned = load_module(str(VERSIONS / "new" / "identity_versioned.py"))


@flow
def compute_once(x: int):
    return versioned.compute(x)


def _unschedulable(address: str, flow_run_id: str) -> list[str]:
    """Messages of the run's TASK_RUN_UNSCHEDULABLE events so far (a 2 s watch)."""
    import grpc
    from fleetflow.api.v1 import common_pb2
    from fleetflow.api.v1 import coordinator_service_pb2 as cs
    from fleetflow.api.v1 import coordinator_service_pb2_grpc as cs_grpc

    found = []
    with grpc.insecure_channel(address) as channel:
        stream = cs_grpc.CoordinatorServiceStub(channel).WatchFlowRun(
            cs.WatchFlowRunRequest(flow_run_id=flow_run_id), timeout=2
        )
        try:
            for batch in stream:
                found += [
                    e.message
                    for e in batch.events
                    if e.kind == common_pb2.EVENT_KIND_TASK_RUN_UNSCHEDULABLE
                ]
        except grpc.RpcError:  # the deadline ends the stream of a running flow run
            pass
    return found


def test_a_worker_with_an_older_version_never_gets_the_node_and_the_run_fails(fleet):
    fleet.start_coordinator("--unschedulable-timeout", "5")
    worker = fleet.start_worker(module=VERSIONS / "old" / "identity_versioned.py", cpu=1)
    new = versioned.compute.fingerprint
    with Client(fleet.address) as client:
        wait_until(lambda: client.list_workers(), 60, what="the old worker to register")
        run = client.submit(compute_once, x=21)
        reason = wait_until(
            lambda: _unschedulable(fleet.address, run.id), 30, what="the unschedulable event"
        )[0]
        assert reason.startswith("workers run another version of task 'identity_versioned:compute'")
        assert new in reason
        old = reason.split("connected workers run ", 1)[1].split(" ", 1)[0]
        assert len(old) == 16 and old != new
        # The dashboard's flow run view lists it among what cannot be placed.
        url = f"{fleet.http_url}/api/flow-runs/{run.id}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.load(response)["unschedulable"] == [{"node": 0, "message": reason}]
        queue = fleetflow("queue", "--json", "--coordinator", fleet.address)
        assert json.loads(queue.stdout)[0]["unschedulable_reason"] == reason
        with pytest.raises(Exception, match="unschedulable for 5 s: workers run another version"):
            run.result(timeout=60)
        # `fleetflow run` says why it waits, then fails the same way.
        target = f"{VERSIONS / 'new' / 'identity_versioned.py'}:compute_flow"
        done = fleetflow("run", target, "--coordinator", fleet.address, check=False)
        assert done.returncode != 0
        out = " ".join((done.stdout + done.stderr).split())  # undo line wrapping
        assert "cannot be scheduled: workers run another version of task" in out
        assert "'identity_versioned:compute'" in out
        assert "unschedulable for 5 s" in out
    assert "task_run_finished" not in worker.log()  # it never ran the old code


def test_any_version_runs_the_older_code_and_says_so(fleet):
    fleet.start_coordinator("--unschedulable-timeout", "5")
    worker = fleet.start_worker(
        "--any-version", module=VERSIONS / "old" / "identity_versioned.py", cpu=1
    )
    with Client(fleet.address) as client:
        assert client.submit(compute_once, x=21).result(timeout=60) == "old code: 21"
    log = worker.log()
    assert '"worker_any_version"' in log and '"level": "warning"' in log
