"""Bug classes users of other orchestrators hit, against a real coordinator and worker.

One fleet for the module (each case is a short flow run): maps over
generators and array-likes, upstream results that are not lists, generator
tasks, exceptions that do not pickle plainly, a task's ``SystemExit`` /
``KeyboardInterrupt`` (which must not stop the caller or ``fleetflow run``),
and failures the coordinator describes (``FlowRunFailed``).
"""

from __future__ import annotations

import pytest
from fleetflow import Client, FlowRunFailed, RemoteTaskError
from fleetflow.loader import load_module

from .fleet import Fleet, fleetflow, wait_until

FLOWS_PATH = __import__("pathlib").Path(__file__).with_name("semantics_flows.py")
flows = load_module(str(FLOWS_PATH))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def semantics_fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("semantics"))
    try:
        address = fleet.start_coordinator(lease_ttl=10.0)
        fleet.start_worker(module=FLOWS_PATH)
        with Client(address) as client:
            wait_until(lambda: client.list_workers(), 60, what="the worker")
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def address(semantics_fleet):
    return semantics_fleet.address


@pytest.fixture(scope="module")
def client(address):
    with Client(address) as client:
        yield client


def test_maps_iterate_array_likes_generators_and_generator_tasks(client):
    assert client.submit(flows.iterables, n=3).result(timeout=60) == [
        [0, 11, 22],  # an upstream array-like mapped with a literal generator
        [0, 2, 4],  # a generator task and an async generator task, split for a map
        [0, 1, 2],  # a generator task's result is what it yields
    ]


def test_an_upstream_dict_is_not_split_and_unequal_upstreams_fail_the_run(client):
    with pytest.raises(TypeError, match="returned dict; a downstream map needs a list"):
        client.submit(flows.split_dict).result(timeout=60)
    differ = r"mapped arguments differ in length: \{'x': 2, 'y': 4\}"
    with pytest.raises(FlowRunFailed, match=differ):
        client.submit(flows.unequal_upstreams).result(timeout=60)


def test_exceptions_that_do_not_pickle_plainly_come_back_as_their_own_type(client):
    with pytest.raises(flows.CodeError) as info:
        client.submit(flows.code_error).result(timeout=60)
    assert info.value.code == 42 and str(info.value) == "code=42 detail=boom"
    with pytest.raises(flows.LockedError) as info:
        client.submit(flows.locked_error).result(timeout=60)
    assert info.value.attempts == 3 and str(info.value) == "held"


def test_system_exit_and_keyboard_interrupt_in_a_task_fail_the_run_not_the_caller(client, address):
    with pytest.raises(RemoteTaskError, match="builtins.SystemExit: 3") as info:
        client.submit(flows.exiting, code=3).result(timeout=60)
    assert isinstance(info.value, FlowRunFailed)
    with pytest.raises(RemoteTaskError, match="builtins.KeyboardInterrupt: from task code"):
        client.submit(flows.interrupting).result(timeout=60)
    # `fleetflow run` reports them as the run's failure: exit code 1, never the
    # task's exit code or a Ctrl-C (130, "interrupted: cancelled ...").
    for name, shown in (("exiting", "SystemExit: 3"), ("interrupting", "KeyboardInterrupt")):
        done = fleetflow("run", f"{FLOWS_PATH}:{name}", "--coordinator", address, check=False)
        assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
        assert shown in done.stderr and "interrupted" not in done.stderr, done.stderr[-2000:]


def test_a_failure_whose_text_breaks_is_still_the_tasks_own(client):
    # Before, the task process died encoding the error (an exception whose __str__
    # raises; a message or log line with a lone surrogate), so the attempt counted
    # as an infrastructure failure, ran three times and the run ended "task process
    # died" instead of with the task's exception.
    with pytest.raises(flows.BadStr) as info:
        client.submit(flows.bad_str).result(timeout=60)
    assert any("BadStr" in note for note in info.value.__notes__)
    with pytest.raises(FileNotFoundError, match="no file caf") as info:
        client.submit(flows.undecodable).result(timeout=60)
    assert any(r"reading caf\udce9.txt" in note for note in info.value.__notes__)


def test_tasks_in_class_bodies_and_factory_dicts_run(client):
    # Before, a worker offered only the tasks its module's namespace held, so
    # these waited as "no connected worker offers task ..." (Celery's
    # "unregistered task"), and a task method bound its first argument to self.
    run = client.submit(flows.methods_and_factories, xs=[1, 2, 3])
    assert run.result(timeout=60) == [[10, 20, 30], [3, 6, 9], 10]


def test_cancelling_an_ended_run_says_it_had_ended(client, address):
    run = client.submit(flows.methods_and_factories, xs=[1])
    run.result(timeout=60)
    done = fleetflow("cancel", run.id, "--coordinator", address)
    assert f"flow run {run.id} had already ended COMPLETED: nothing to cancel" in done.stdout
    assert client.get(run.id).state == "COMPLETED"


def test_inspect_and_watch_show_a_run_that_a_task_timeout_failed(client, address):
    # A TaskTimeout is a fleetflow error; `inspect` and `watch` re-raised it as
    # their own failure ("Error: task ... exceeded its timeout") instead of
    # showing the run.
    run = client.submit(flows.timing_out)
    with pytest.raises(TimeoutError, match="exceeded its timeout of 0.5 s"):
        run.result(timeout=60)
    shown = fleetflow("inspect", run.id, "--coordinator", address, check=False)
    assert shown.returncode == 1 and "Error:" not in shown.stderr, shown.stderr
    assert "FAILED" in shown.stdout and "exceeded its timeout of 0.5 s" in shown.stdout
    watched = fleetflow("watch", run.id, "--coordinator", address, check=False)
    assert watched.returncode == 1 and "Error:" not in watched.stderr, watched.stderr
    assert "TaskTimeout: task semantics_flows:too_slow exceeded" in watched.stdout


def test_an_async_task_that_blocks_the_loop_is_named_in_the_worker_log(client, semantics_fleet):
    # Hatchet's "the main thread may be blocked" class: before, nothing said why
    # heartbeats stopped and leases expired; the task still completes (3 s < TTL 10 s).
    assert client.submit(flows.blocking_async, seconds=3.0).result(timeout=60) == 3.0
    worker = semantics_fleet.workers[0]
    wait_until(lambda: "worker_loop_blocked" in worker.log(), 10, what="the warning")
    line = next(x for x in worker.log().splitlines() if "worker_loop_blocked" in x)
    assert "make it a plain def task" in line
