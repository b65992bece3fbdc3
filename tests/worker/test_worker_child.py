"""The pool-process function, called directly in the test process."""

from __future__ import annotations

import signal
import time

import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.serde import dumps, loads
from fleetflow_worker import _child
from fleetflow_worker._child import run_task
from fleetflow_worker.errors import TaskNotRegistered


def error_of(payload) -> common_pb2.TaskError:
    kind, data = payload
    assert kind == "error", payload
    return common_pb2.TaskError.FromString(data)


def test_success_returns_the_pickled_value(sample_tasks):
    kind, data = run_task("double", [("x", dumps(21))], False, tasks=sample_tasks)
    assert (kind, loads(data)) == ("value", 42)


def test_fan_in_list_argument(sample_tasks):
    kind, data = run_task("total", [("values", [dumps(1), dumps(2)])], False, tasks=sample_tasks)
    assert loads(data) == 3


@pytest.mark.parametrize("name", ["split_range", "as_tuple"])
def test_split_result_returns_items(sample_tasks, name):
    kind, items = run_task(name, [("n", dumps(3))], True, tasks=sample_tasks)
    assert kind == "items"
    assert [loads(b) for b in items] == [0, 1, 2]


def test_split_result_of_a_dict_fails_the_attempt(sample_tasks):
    error = error_of(run_task("as_dict", [("n", dumps(2))], True, tasks=sample_tasks))
    assert error.type == "builtins.TypeError"
    assert error.message == "task as_dict returned dict; a downstream map needs a list or tuple"


def test_task_exception_is_captured(sample_tasks):
    error = error_of(run_task("boom", [("x", dumps(5))], False, tasks=sample_tasks))
    assert error.type == "builtins.ValueError"
    assert error.message == "bad value 5"
    assert "sample_tasks.py" in error.traceback
    assert str(loads(error.pickled)) == "bad value 5"


def test_sys_exit_in_a_task_fails_only_the_task(sample_tasks):
    error = error_of(run_task("exit_task", [("code", dumps(4))], False, tasks=sample_tasks))
    assert error.type == "builtins.SystemExit"


def test_unpicklable_result(sample_tasks):
    error = error_of(run_task("unpicklable_result", [], False, tasks=sample_tasks))
    assert "cannot be pickled" in error.message


def test_argument_that_does_not_unpickle(sample_tasks):
    error = error_of(run_task("double", [("x", b"not a pickle")], False, tasks=sample_tasks))
    assert error.type.endswith("UnpicklingError")


def test_missing_required_argument(sample_tasks):
    error = error_of(run_task("double", [], False, tasks=sample_tasks))
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


def test_soft_timeout_interrupts_python_code(sample_tasks):
    started = time.monotonic()
    error = error_of(run_task("spin", [("seconds", dumps(5))], False, 0.1, tasks=sample_tasks))
    assert time.monotonic() - started < 2
    assert error.type == "builtins.TimeoutError"
    assert error.message == "task spin exceeded its timeout of 0.1 s"
    assert "in spin" in error.traceback  # where the task was interrupted


def test_timeout_leaves_no_alarm_behind(sample_tasks):
    assert run_task("double", [("x", dumps(1))], False, 0.05, tasks=sample_tasks)[0] == "value"
    time.sleep(0.1)  # an armed SIGALRM would kill the test process here


def test_init_process_loads_the_modules_and_ignores_sigint(monkeypatch, sample_tasks_path):
    monkeypatch.setattr(_child, "_TASKS", {})
    previous = signal.getsignal(signal.SIGINT)
    try:
        _child.init_process([sample_tasks_path])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _child.ping() == len(_child._TASKS) > 5
    assert run_task("double", [("x", dumps(2))], False) == ("value", dumps(4))
