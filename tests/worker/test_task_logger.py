"""``fleetflow.get_logger()``: ids on every line, and a failed attempt's last lines kept."""

from __future__ import annotations

import asyncio
import logging

import pytest
import structlog
import structlog.testing
from fleetflow import get_logger, task
from fleetflow.execution import TAIL_LINES, attempt_scope, current_tail
from fleetflow.serde import error_from_exception, exception_from_error
from fleetflow_worker import _codec
from fleetflow_worker._child import run_task
from fleetflow_worker._execute import _guarded

log = get_logger()
IDS = {
    "flow_run_id": "fr1",
    "task_run_id": 7,
    "attempt": 2,
    "worker_id": "w1",
    "task_name": "noisy",
}


@task
def noisy(n: int, fail: bool = False) -> int:
    for i in range(n):
        log.info("step", i=i)
    log.debug("quiet detail")
    if fail:
        log.error("giving up", n=n)
        raise ValueError("no luck")
    return n


@task
async def noisy_async(fail: bool) -> int:
    log.bind(phase="async").warning("about to decide")
    if fail:
        raise KeyError("missing")
    return 1


@pytest.fixture
def info_level():
    """structlog as the worker configures it, at info level, captured."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as lines:
        yield lines
    structlog.reset_defaults()


def test_lines_carry_the_attempt_ids_inside_a_scope_and_none_outside(info_level):
    log.info("outside")
    with attempt_scope(IDS):
        log.info("inside", path="/x.py")
    outside, inside = info_level
    assert "flow_run_id" not in outside
    assert {k: inside[k] for k in IDS} == IDS and inside["path"] == "/x.py"
    assert current_tail() == []


def test_a_failed_attempt_keeps_its_last_lines_at_the_logged_levels(info_level):
    from fleetflow.serde import dumps

    with attempt_scope(IDS):
        payload = run_task(
            "noisy", [("n", dumps(30)), ("fail", dumps(True))], False, tasks={"noisy": noisy}
        )
    error = _codec.error_of(payload)
    tail = list(error.log_tail)
    assert len(tail) == TAIL_LINES
    assert tail[0].endswith("info     step i=11") and tail[-2].endswith("step i=29")
    assert tail[-1].endswith("error    giving up n=30")
    assert not any("quiet detail" in line for line in tail)  # debug is filtered out
    assert all("fr1" not in line for line in tail)  # ids are not repeated
    assert len(info_level) == 31 and all(line["task_run_id"] == 7 for line in info_level)

    exc = exception_from_error(error)
    assert isinstance(exc, ValueError)
    assert exc.__notes__[-1].splitlines()[0] == "Last log lines of the failed attempt:"
    assert exc.__notes__[-1].splitlines()[-1].endswith("giving up n=30")


def test_a_success_keeps_nothing_and_errors_outside_an_attempt_have_no_tail(info_level):
    from fleetflow.serde import dumps

    with attempt_scope(IDS):
        kind, _ = run_task("noisy", [("n", dumps(3))], False, tasks={"noisy": noisy})
    assert kind == "value"
    assert list(error_from_exception(RuntimeError("x")).log_tail) == []


async def test_an_async_attempt_keeps_its_tail_in_its_own_context(info_level):
    for fail in (True, False):
        with structlog.contextvars.bound_contextvars(**IDS):
            inner = asyncio.ensure_future(_guarded(noisy_async.fn(fail), noisy_async, False, 0))
            result = await inner
        if fail:
            tail = list(_codec.error_of(result.payload).log_tail)
            assert len(tail) == 1 and tail[0].endswith("warning  about to decide phase='async'")
        else:
            assert result.payload[0] == "value"
    assert current_tail() == []  # the attempt's tail stayed in its own task
    assert all(line["worker_id"] == "w1" for line in info_level)


def test_the_logger_works_without_any_configuration():
    structlog.reset_defaults()
    log.info("plain", x=1)  # a task called as a plain function: no ids, no error
    assert noisy.fn(2) == 2
