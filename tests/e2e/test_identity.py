"""Task identity with real processes (issue 11, item 1).

Bug reports covered: tasks made by one factory (``double = make_scaler(2)``,
``triple = make_scaler(3)``) returned ``[30, 30]``; two modules that each
define a task ``process``, loaded by one worker, both ran the second one.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from fleetflow import Client, flow
from fleetflow.loader import load_module

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
