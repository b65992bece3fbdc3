"""``client.run()``: submit and wait in one call, with a real coordinator and workers (issue 18)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fleetflow import AsyncClient, Client, FlowRunTimeout
from fleetflow.loader import load_module

from .fleet import FLOWS, Fleet, wait_until

# Loaded as workers load it, so exceptions pickled on a worker resolve here.
flows = load_module(str(FLOWS))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """One coordinator and two workers for the whole module (each test is quick)."""
    fleet = Fleet(tmp_path_factory.mktemp("run"))
    fleet.start_coordinator()
    fleet.start_worker()
    fleet.start_worker()
    yield fleet
    fleet.stop()


def test_run_returns_the_result_and_raises_a_task_failure_as_result_does(fleet, tmp_path):
    with Client(fleet.address) as client:
        assert client.run(flows.map_inc, n=3, timeout=60) == [1, 2, 3]
        ledger = str(tmp_path / "flaky.ledger")
        handle_way = client.submit(flows.flaky_flow, ledger=ledger, failures=2, retries=1)
        with pytest.raises(flows.FlakyError, match="failure number 2") as expected:
            handle_way.result(timeout=60)
        with pytest.raises(flows.FlakyError, match="failure number 2") as got:
            client.run(flows.flaky_flow, ledger=str(tmp_path / "other.ledger"), failures=2,
                       retries=1, timeout=60)  # fmt: skip
        assert type(got.value) is type(expected.value)
        assert any("Remote traceback" in note for note in got.value.__notes__)


def test_run_timing_out_leaves_the_flow_run_running(fleet, tmp_path):
    with Client(fleet.address) as client:
        started = time.monotonic()
        with pytest.raises(FlowRunTimeout) as info:
            client.run(flows.slow_flow, ledger=str(tmp_path / "slow"), seconds=30, timeout=0.5)
        assert time.monotonic() - started < 10
        flow_run_id = info.value.flow_run_id
        assert client.get(flow_run_id).state == "RUNNING"
        assert client.cancel(flow_run_id) >= 1  # ends it (the test's own clean-up)
        assert client.wait(flow_run_id, timeout=30) == "CANCELLED"


def test_run_with_the_same_idempotency_key_returns_the_same_flow_runs_result(fleet):
    with Client(fleet.address) as client:
        before = len(client.list_flow_runs())
        key = f"once-{time.monotonic_ns()}"
        assert client.run(flows.map_inc, n=2, idempotency_key=key, timeout=60) == [1, 2]
        assert client.run(flows.map_inc, n=2, idempotency_key=key, timeout=60) == [1, 2]
        assert client.submit(flows.map_inc, n=2, idempotency_key=key).created is False
        assert len(client.list_flow_runs()) == before + 1


def test_async_run_and_a_cancelled_run_cancels_its_flow_run(fleet, tmp_path):
    ledger = tmp_path / "slow"

    async def scenario() -> str:
        async with AsyncClient(fleet.address) as client:
            assert await client.run(flows.map_inc, n=2, timeout=60) == [1, 2]
            before = {r.flow_run_id for r in await client.list_flow_runs()}
            call = asyncio.create_task(
                client.run(flows.slow_flow, ledger=str(ledger), seconds=30, timeout=60)
            )
            deadline = time.monotonic() + 30
            while not (ledger.exists() and ledger.read_text()):  # its task run started
                assert time.monotonic() < deadline and not call.done()
                await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            (started,) = [r for r in await client.list_flow_runs() if r.flow_run_id not in before]
            return started.flow_run_id

    flow_run_id = asyncio.run(scenario())
    with Client(fleet.address) as client:
        wait_until(lambda: client.get(flow_run_id).state == "CANCELLED", 30, what="cancelled")
