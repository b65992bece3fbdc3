"""The worker's result-store transfers wait for an unreachable coordinator, and only for that.

The end-to-end case (a coordinator restart during uploads) is in
tests/e2e/test_faults.py; these check the rule itself, fast.
"""

from __future__ import annotations

import grpc
import pytest
from fleetflow_worker._data import _patiently


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), code.name)


def scripted(*errors: grpc.StatusCode):
    """A call that fails with ``errors`` in turn, then returns how many calls it took."""
    calls = []

    async def call() -> int:
        calls.append(1)
        if len(calls) <= len(errors):
            raise rpc_error(errors[len(calls) - 1])
        return len(calls)

    return call


async def test_an_unreachable_coordinator_is_waited_for():
    unreachable = [grpc.StatusCode.UNAVAILABLE] * 3 + [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert await _patiently("upload", scripted(*unreachable), patience_s=60) == 5


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # the coordinator's disk is full
        grpc.StatusCode.ALREADY_EXISTS,  # other bytes under the key
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
async def test_a_refusal_is_not_retried_here(code):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _patiently("upload", scripted(code), patience_s=60)
    assert raised.value.code() == code


async def test_waiting_is_bounded():
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _patiently("download", scripted(*[grpc.StatusCode.UNAVAILABLE] * 50), patience_s=0.0)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_attempt_cancelled_while_its_inputs_are_fetched_never_runs(sample_tasks):
    """Fetching inputs may now wait for an unreachable coordinator; a cancel that
    arrives meanwhile (the coordinator came back and took the lease away) must
    keep the task code from starting once the inputs are in."""
    import asyncio

    from fake_worker_service import make_lease
    from fleetflow_worker._execute import AttemptRunner
    from fleetflow_worker.state import AttemptKey, AttemptTable

    name = next(n for n in sample_tasks if n.endswith(":counted"))
    counted = sample_tasks[name].fn.__globals__["COUNTED"]
    counted.update(now=0, peak=0)
    fetching, fetched, released = asyncio.Event(), asyncio.Event(), []

    class SlowInputs:
        def context(self, lease):
            return None

        async def prepare(self, args):
            fetching.set()
            await fetched.wait()
            return args, ["pinned-key"]

        def release(self, keys):
            released.extend(keys)

    outcomes = []
    runner = AttemptRunner(
        "w", sample_tasks, None, AttemptTable(4), outcomes.append, data=SlowInputs()
    )
    assert runner.start(make_lease(1, name, seconds=0.0))
    await asyncio.wait_for(fetching.wait(), 5)
    runner.cancel(AttemptKey(1, 1))
    fetched.set()
    await asyncio.wait_for(asyncio.gather(*runner.attempts), 5)
    assert counted["peak"] == 0, "the cancelled attempt's code ran"
    assert outcomes == [] and released == ["pinned-key"]
