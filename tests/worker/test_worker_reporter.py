from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from fleetflow.api.v1 import worker_service_pb2
from fleetflow.serde import loads
from fleetflow_worker._reporter import OutcomeReporter
from fleetflow_worker.backoff import Backoff
from fleetflow_worker.errors import OutcomeTooLarge

ACCEPTED = worker_service_pb2.OUTCOME_ACK_ACCEPTED
STALE = worker_service_pb2.OUTCOME_ACK_REJECTED_STALE


def outcome(i: int, size: int = 1) -> worker_service_pb2.Outcome:
    return worker_service_pb2.Outcome(task_run_id=i, attempt=1, value=b"x" * size)


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeCoordinator:
    """Answers ReportOutcomes from a script of errors, then acks everything."""

    def __init__(self, errors=(), ack=ACCEPTED, max_bytes=None):
        self.errors = list(errors)
        self.ack = ack
        self.max_bytes = max_bytes
        self.calls: list[list[int]] = []
        self.received: list[worker_service_pb2.Outcome] = []

    async def send(self, batch):
        self.calls.append([o.task_run_id for o in batch])
        if self.errors:
            raise self.errors.pop(0)
        if self.max_bytes is not None and sum(o.ByteSize() for o in batch) > self.max_bytes:
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large")
        self.received.extend(batch)
        return [self.ack] * len(batch)


@pytest.fixture
def acked():
    return []


def make_reporter(fake, acked, **kwargs):
    return OutcomeReporter(
        fake.send,
        acked.append,
        backoff=Backoff(cap_s=0.01, base_s=0.001, rng=random.Random(0)),
        **kwargs,
    )


async def run_until_flushed(reporter, timeout_s=5.0):
    task = asyncio.create_task(reporter.run())
    try:
        assert await reporter.flush(timeout_s)
    finally:
        task.cancel()


async def test_everything_queued_goes_in_one_call(acked):
    fake = FakeCoordinator()
    reporter = make_reporter(fake, acked)
    for i in range(5):
        reporter.put(outcome(i))
    await run_until_flushed(reporter)
    assert fake.calls == [[0, 1, 2, 3, 4]]
    assert [k.task_run_id for k in acked] == [0, 1, 2, 3, 4]
    assert len(reporter) == 0


async def test_batches_are_capped_by_count_and_bytes(acked):
    fake = FakeCoordinator()
    reporter = make_reporter(fake, acked, batch_size=3, batch_bytes=250)
    for i in range(7):
        reporter.put(outcome(i, size=100))
    await run_until_flushed(reporter)
    assert fake.calls == [[0, 1], [2, 3], [4, 5], [6]]


async def test_rpc_errors_keep_outcomes_and_retry(acked):
    fake = FakeCoordinator(errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)] * 3)
    reporter = make_reporter(fake, acked)
    reporter.put(outcome(1))
    reporter.put(outcome(2))
    await run_until_flushed(reporter)
    assert fake.calls == [[1, 2]] * 4
    assert [o.task_run_id for o in fake.received] == [1, 2]


async def test_stale_acks_also_remove_outcomes(acked):
    fake = FakeCoordinator(ack=STALE)
    reporter = make_reporter(fake, acked)
    reporter.put(outcome(1))
    await run_until_flushed(reporter)
    assert len(acked) == 1


async def test_short_ack_list_keeps_the_rest(acked):
    answers = [[ACCEPTED], [ACCEPTED]]
    sent = []

    async def send(batch):
        sent.append([o.task_run_id for o in batch])
        return answers.pop(0)

    reporter = OutcomeReporter(send, acked.append)
    reporter.put(outcome(1))
    reporter.put(outcome(2))
    await run_until_flushed(reporter)
    assert sent == [[1, 2], [2]]


async def test_too_large_batches_are_split(acked):
    fake = FakeCoordinator(max_bytes=250)
    reporter = make_reporter(fake, acked)
    for i in range(4):
        reporter.put(outcome(i, size=100))
    await run_until_flushed(reporter)
    assert [o.task_run_id for o in fake.received] == [0, 1, 2, 3]


async def test_an_outcome_too_large_alone_becomes_a_failure(acked):
    fake = FakeCoordinator(max_bytes=1000)
    reporter = make_reporter(fake, acked)
    reporter.put(outcome(1, size=5000))
    reporter.put(outcome(2))
    await run_until_flushed(reporter)
    first, second = fake.received
    assert first.task_run_id == 1 and first.WhichOneof("result") == "error"
    assert not first.infrastructure
    assert isinstance(loads(first.error.pickled), OutcomeTooLarge)
    assert "5" in first.error.message and "message too large" in first.error.message
    assert second.value == b"x"


async def test_flush_times_out_while_the_coordinator_is_down(acked):
    fake = FakeCoordinator(errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)] * 1000)
    reporter = make_reporter(fake, acked)
    reporter.put(outcome(1))
    task = asyncio.create_task(reporter.run())
    try:
        assert not await reporter.flush(0.1)
        assert len(reporter) == 1
    finally:
        task.cancel()
