"""Pure parts of lifecycle control: the memory limit rule, the errors, the lease's request."""

from __future__ import annotations

import pickle

import pytest
from fleetflow.api.v1 import worker_service_pb2 as pb
from fleetflow.serde import error_from_exception
from fleetflow_worker._codec import encode_error, to_outcome
from fleetflow_worker._execute import memory_request
from fleetflow_worker._usage import memory_limit_bytes
from fleetflow_worker.errors import MemoryLimitExceeded, TaskTimeout, format_bytes

MIB = 1 << 20


@pytest.mark.parametrize(
    ("request_bytes", "fraction", "margin", "limit"),
    [
        (0, 0.2, 50 * MIB, 0),  # no request: no limit
        (-1, 0.2, 50 * MIB, 0),
        (100 * MIB, 0.2, 50 * MIB, 170 * MIB),
        (1 << 30, 0.2, 50 * MIB, 1.2 * (1 << 30) + 50 * MIB),
        (100 * MIB, 0.0, 0, 100 * MIB),
    ],
)
def test_memory_limit_rule(request_bytes, fraction, margin, limit):
    assert memory_limit_bytes(request_bytes, fraction, margin) == pytest.approx(limit)


@pytest.mark.parametrize(
    ("n", "text"),
    [(512, "512 B"), (2048, "2 KiB"), (100 * MIB, "100 MiB"), (1.5 * (1 << 30), "1.5 GiB")],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_task_timeout_is_a_timeout_error_that_pickles():
    exc = pickle.loads(pickle.dumps(TaskTimeout("etl", 2.0)))
    assert isinstance(exc, TimeoutError)
    assert str(exc) == "task etl exceeded its timeout of 2 s"
    error = error_from_exception(exc)
    assert error.type == "fleetflow_worker.errors.TaskTimeout"


def test_memory_limit_exceeded_names_request_and_peak():
    exc = pickle.loads(
        pickle.dumps(MemoryLimitExceeded("sample_tasks:hog", 100 * MIB, 312 * MIB, 170 * MIB))
    )
    assert isinstance(exc, MemoryError)
    assert str(exc).startswith(
        "task sample_tasks:hog exceeded its memory request of 100 MiB "
        "(peak 312 MiB, killed above 170 MiB)"
    )


def test_memory_request_comes_from_the_lease_resources():
    lease = pb.Lease(task_run_id=1, attempt=1)
    assert memory_request(lease) == 0, "an older coordinator sends none: no limit"
    lease.resources.amounts["cpu"] = 1
    assert memory_request(lease) == 0
    lease.resources.amounts["memory"] = 100 * MIB
    assert memory_request(lease) == 100 * MIB


def test_outcome_carries_timeout_and_usage():
    outcome = to_outcome(
        3, 2, encode_error(TaskTimeout("t", 1)), timed_out=True, cpu_seconds=0.5,
        peak_memory_bytes=64 * MIB,
    )  # fmt: skip
    assert outcome.timed_out and not outcome.infrastructure
    assert (outcome.cpu_seconds, outcome.peak_memory_bytes) == (0.5, 64 * MIB)
    assert outcome.error.message == "task t exceeded its timeout of 1 s"
