"""The pool-process function, called directly in the test process."""

from __future__ import annotations

import signal

import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.serde import dumps, loads
from fleetflow_worker import _child, _codec
from fleetflow_worker._child import run_task
from fleetflow_worker.errors import TaskNotRegistered


def error_of(payload) -> common_pb2.TaskError:
    assert payload[0] == "error", payload
    return _codec.error_of(payload)


def test_success_returns_the_pickled_value(sample_tasks):
    kind, data = run_task("sample_tasks:double", [("x", dumps(21))], False, tasks=sample_tasks)
    assert (kind, loads(data)) == ("value", 42)


def test_fan_in_list_argument(sample_tasks):
    kind, data = run_task(
        "sample_tasks:total", [("values", [dumps(1), dumps(2)])], False, tasks=sample_tasks
    )
    assert loads(data) == 3


@pytest.mark.parametrize("name", ["sample_tasks:split_range", "sample_tasks:as_tuple"])
def test_split_result_returns_items(sample_tasks, name):
    kind, items = run_task(name, [("n", dumps(3))], True, tasks=sample_tasks)
    assert kind == "items"
    assert [loads(b) for b in items] == [0, 1, 2]


def test_split_result_of_a_dict_fails_the_attempt(sample_tasks):
    error = error_of(run_task("sample_tasks:as_dict", [("n", dumps(2))], True, tasks=sample_tasks))
    assert error.type == "builtins.TypeError"
    assert (
        error.message == "task sample_tasks:as_dict returned dict; a downstream map "
        "needs a list, tuple or other iterable (str, bytes, dicts and sets are not split)"
    )


def test_task_exception_is_captured(sample_tasks):
    error = error_of(run_task("sample_tasks:boom", [("x", dumps(5))], False, tasks=sample_tasks))
    assert error.type == "builtins.ValueError"
    assert error.message == "bad value 5"
    assert "sample_tasks.py" in error.traceback
    assert str(loads(error.pickled)) == "bad value 5"


def test_sys_exit_in_a_task_fails_only_the_task(sample_tasks):
    error = error_of(
        run_task("sample_tasks:exit_task", [("code", dumps(4))], False, tasks=sample_tasks)
    )
    assert error.type == "builtins.SystemExit"


def test_unpicklable_result(sample_tasks):
    error = error_of(run_task("sample_tasks:unpicklable_result", [], False, tasks=sample_tasks))
    assert "cannot be pickled" in error.message


def test_argument_that_does_not_unpickle(sample_tasks):
    error = error_of(
        run_task("sample_tasks:double", [("x", b"not a pickle")], False, tasks=sample_tasks)
    )
    assert error.type.endswith("UnpicklingError")


def test_missing_required_argument(sample_tasks):
    error = error_of(run_task("sample_tasks:double", [], False, tasks=sample_tasks))
    assert error.type == "builtins.TypeError"
    assert "'x'" in error.message


def test_unknown_task(sample_tasks):
    error = error_of(run_task("nope", [], False, tasks=sample_tasks))
    assert error.type == "fleetflow_worker.errors.TaskNotRegistered"
    exc = loads(error.pickled)
    assert isinstance(exc, TaskNotRegistered) and exc.task_name == "nope"
    assert "not registered in this task process" in str(exc)


def test_registered_name_differs_from_the_function_name(sample_tasks):
    assert run_task("renamed", [], False, tasks=sample_tasks) == ("value", dumps("renamed"))


def test_serve_answers_ready_then_one_payload_per_request(monkeypatch, sample_tasks_path):
    import multiprocessing

    monkeypatch.setattr(_child, "_TASKS", {})
    monkeypatch.setattr(_child, "_die_with_parent", lambda: None)  # not in the test process
    previous = signal.getsignal(signal.SIGINT)
    pool_end, child_end = multiprocessing.Pipe()
    pool_end.send(("sample_tasks:double", [("x", dumps(4))], False))
    pool_end.send(("sample_tasks:boom", [("x", dumps(1))], False))
    pool_end.send(None)
    try:
        _child.serve(child_end, [sample_tasks_path])  # returns on None
    finally:
        signal.signal(signal.SIGINT, previous)
    status, versions = pool_end.recv()  # what it loaded: {task name: fingerprint}
    assert status == "ready" and len(versions) == len(_child._TASKS) > 5
    assert versions == {name: task.fingerprint for name, task in _child._TASKS.items()}
    assert pool_end.recv() == ("value", dumps(8))
    assert error_of(pool_end.recv()).message == "bad value 1"


def test_serve_reports_a_module_that_fails_to_import(tmp_path, monkeypatch):
    import multiprocessing

    bad = tmp_path / "bad_tasks.py"
    bad.write_text("raise ImportError('nope')\n")
    monkeypatch.setattr(_child, "_TASKS", {})
    monkeypatch.setattr(_child, "_die_with_parent", lambda: None)
    previous = signal.getsignal(signal.SIGINT)
    pool_end, child_end = multiprocessing.Pipe()
    try:
        _child.serve(child_end, [str(bad)])
    finally:
        signal.signal(signal.SIGINT, previous)
    status, text = pool_end.recv()
    assert status == "failed" and "ImportError: nope" in text


def test_init_process_loads_the_modules_and_ignores_sigint(monkeypatch, sample_tasks_path):
    monkeypatch.setattr(_child, "_TASKS", {})
    previous = signal.getsignal(signal.SIGINT)
    try:
        _child.init_process([sample_tasks_path])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _child.ping() == len(_child._TASKS) > 5
    assert run_task("sample_tasks:double", [("x", dumps(2))], False) == ("value", dumps(4))


def test_retry_directives_of_task_code(tmp_path):
    from fleetflow import task
    from fleetflow.api.v1 import worker_service_pb2
    from fleetflow.errors import NonRetryableError, Retry

    @task(retry_on=(KeyError,))
    def picky(kind):
        raise {"key": KeyError("k"), "value": ValueError("v"), "retry": Retry(delay=7)}[kind]

    @task
    def plain(kind):
        raise {"nonretryable": NonRetryableError("stop"), "retry": Retry()}[kind]

    tasks = {"picky": picky, "plain": plain}

    def outcome(name, kind):
        kind_, data = run_task(name, [("kind", dumps(kind))], False, tasks=tasks)
        assert kind_ == "error"
        return worker_service_pb2.Outcome.FromString(data)

    assert not outcome("picky", "key").non_retryable, "in retry_on"
    assert outcome("picky", "value").non_retryable, "outside retry_on"
    retry = outcome("picky", "retry")
    assert retry.retry_requested and retry.retry_delay_seconds == 7 and not retry.non_retryable
    assert outcome("plain", "nonretryable").non_retryable
    no_delay = outcome("plain", "retry")
    assert not no_delay.retry_requested and not no_delay.non_retryable, "the policy decides"
