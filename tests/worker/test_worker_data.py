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
