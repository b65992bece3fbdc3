"""Small helpers of the worker's RPC loops: channel options, supervision, recovery logs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from fleetflow_worker.backoff import Backoff

__all__ = ["channel_options", "recovered", "supervised"]

log = structlog.get_logger()


def recovered(rpc: str, backoff: Backoff) -> None:
    """Record a successful call of ``rpc``; log once when it ends a streak of failures."""
    failures = backoff.succeeded()
    if failures:
        log.info("coordinator_rpc_recovered", rpc=rpc, failed_calls=failures)


async def supervised(name: str, loop: Callable[[], Awaitable[Any]]) -> None:
    """Run a loop forever: a bug that raises is logged and the loop restarts."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker_loop_crashed", loop=name)
            await asyncio.sleep(1.0)


def channel_options(backoff_cap_s: float) -> list[tuple[str, Any]]:
    """Channel options: no receive limit for big leases, and fast reconnects.

    gRPC's own reconnect backoff grows to 120 s by default; capping it keeps
    a restarted coordinator from waiting that long for its workers.
    """
    cap_ms = max(100, int(backoff_cap_s * 1000))
    return [
        ("grpc.max_receive_message_length", -1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
    ]
