"""One client: Client is a blocking facade over AsyncClient, with the same methods.

The parity checks compare the classes themselves, so a call added to one and
not the other fails here. The facade checks run a real gRPC server (the fake
CoordinatorService of ``test_client``) and call the blocking client from
several threads, from inside a running asyncio loop, and while it is closed.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest
from fleetflow import (
    AsyncClient,
    AsyncFlowRunHandle,
    Client,
    FleetflowError,
    FlowRunHandle,
    FlowRunNotFound,
    RPCError,
)
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb

from .fake_coordinator import FAST, incs, make_events

State = common_pb2.FlowRunState


def _public(cls: type) -> dict[str, object]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}


def _shape(fn) -> list[tuple]:
    """Parameters as (name, kind, default, annotation): what a caller sees."""
    return [
        (p.name, p.kind, p.default, p.annotation) for p in inspect.signature(fn).parameters.values()
    ]


@pytest.mark.parametrize(
    ("blocking", "asynchronous"),
    [(Client, AsyncClient), (FlowRunHandle, AsyncFlowRunHandle)],
    ids=["client", "handle"],
)
def test_both_expose_the_same_public_methods(blocking, asynchronous):
    sync_methods, async_methods = _public(blocking), _public(asynchronous)
    assert sorted(sync_methods) == sorted(async_methods)
    for name, method in sync_methods.items():
        assert _shape(method) == _shape(async_methods[name]), name
        assert not inspect.iscoroutinefunction(method), name


def test_both_clients_take_the_same_settings():
    assert _shape(Client.__init__) == _shape(AsyncClient.__init__)


def test_every_async_call_is_a_coroutine_or_an_async_iterator():
    plain = {"handle"}  # builds a handle, no I/O
    for name, method in _public(AsyncClient).items():
        if name in plain:
            assert not inspect.iscoroutinefunction(method)
            continue
        is_async = inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)
        assert is_async, f"AsyncClient.{name} is neither a coroutine nor an async iterator"


def test_blocking_methods_carry_the_async_documentation():
    assert "FlowRunNotFound" in Client.get.__doc__
    assert "Raises:" in Client.result.__doc__ and "TimeoutError" in Client.result.__doc__


# ------------------------------------------------------- the calls, both ways


async def _both(fake, call):
    """Run ``call(client)`` with a Client and an AsyncClient; both answers."""
    with Client(fake.address, backoff=FAST) as client:
        blocking = call(client)
    async with AsyncClient(fake.address, backoff=FAST) as client:
        asynchronous = await call(client)
    return blocking, asynchronous


async def test_cancel_task_run_both_ways(fake):
    assert await _both(fake, lambda c: c.cancel_task_run(7)) == (1, 1)
    assert [r.task_run_id for r in fake.requests] == [7, 7]


async def test_set_concurrency_limit_both_ways(fake):
    await _both(fake, lambda c: c.set_concurrency_limit("warehouse", 2))
    await _both(fake, lambda c: c.set_concurrency_limit("warehouse", None))
    assert [(r.tag, r.limit) for r in fake.requests] == [("warehouse", 2)] * 2 + [
        ("warehouse", -1)
    ] * 2


async def test_demand_both_ways(fake):
    blocking, asynchronous = await _both(fake, lambda c: c.demand())
    assert blocking == asynchronous
    (demand,) = blocking
    assert (demand.pool, demand.waiting, demand.resources) == ("gpu", 3, {"gpu": 1.0})


async def test_prune_both_ways(fake):
    fake.unavailable["PruneFlowRuns"] = 2  # retried the same way on both sides
    assert await _both(fake, lambda c: c.prune(60.0)) == (["fr-0"], ["fr-0"])
    assert [r.older_than_seconds for r in fake.requests] == [60.0, 60.0]


async def test_errors_are_the_same_both_ways(fake):
    for call, error in [
        (lambda c: c.get("nope"), FlowRunNotFound),
        (lambda c: c.set_concurrency_limit("", 1), FleetflowError),
    ]:
        with Client(fake.address, backoff=FAST) as client, pytest.raises(error) as blocking:
            call(client)
        async with AsyncClient(fake.address, backoff=FAST) as client:
            with pytest.raises(error) as asynchronous:
                await call(client)
        assert str(blocking.value) == str(asynchronous.value)


# ------------------------------------------------------------- the facade


def test_calls_from_several_threads_at_once(fake):
    fake.events = make_events(40)
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    errors: list[BaseException] = []
    seen: dict[str, list] = {}

    def caller(name: str, client: Client) -> None:
        try:
            if name == "watch":
                seen[name] = [e.seq for e in client.watch("fr-1")]
            else:
                seen[name] = [client.get("fr-1").state for _ in range(25)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with Client(fake.address, backoff=FAST) as client:
        threads = [
            threading.Thread(target=caller, args=(name, client))
            for name in ["watch", "a", "b", "c", "d", "e"]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert seen["watch"] == list(range(1, 43))
    assert all(seen[n] == ["COMPLETED"] * 25 for n in "abcde")
    assert len(fake.gets) == 5 * 25


async def test_blocking_client_inside_a_running_loop(fake):
    """A caller on an asyncio loop may use the blocking client (it blocks that loop)."""
    fake.events = make_events(3)
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    with Client(fake.address, backoff=FAST) as client:
        assert client.submit(incs, n=2).wait(timeout=5) == "COMPLETED"
        assert [e.seq for e in client.watch("fr-1")] == [1, 2, 3, 4, 5]
        # an AsyncClient on this loop and the Client's own loop side by side
        async with AsyncClient(fake.address, backoff=FAST) as other:
            assert (await other.get("fr-1")).state == client.get("fr-1").state
    await asyncio.sleep(0.05)
    ticker.cancel()
    assert ticks >= 2  # this loop kept running between the blocking calls


def test_close_ends_a_watch_blocked_in_another_thread(fake):
    fake.events = make_events(2)[:2]  # no terminal event
    fake.hold_watch = True  # and the stream stays open
    outcome: dict[str, object] = {}

    def watcher(client: Client) -> None:
        try:
            outcome["events"] = [e.seq for e in client.watch("fr-1")]
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc

    client = Client(fake.address, backoff=FAST)
    thread = threading.Thread(target=watcher, args=(client,))
    thread.start()
    deadline = time.monotonic() + 10
    while not fake.watches and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    started = time.monotonic()
    client.close()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert isinstance(outcome.get("error"), RPCError), outcome
    assert outcome["error"].code == "CANCELLED"
    with pytest.raises(ValueError, match="closed"):
        client.get("fr-1")
    client.close()  # twice is fine


@pytest.mark.parametrize("how", ["break", "drop"])
def test_leaving_a_watch_ends_its_stream(fake, how):
    fake.events = make_events(5)[:4]
    fake.hold_watch = True
    with Client(fake.address, backoff=FAST) as client:
        events = client.watch("fr-1")
        assert next(events).seq == 1
        if how == "break":
            events.close()
        else:
            del events  # collected: the generator closes itself
        deadline = time.monotonic() + 10
        while fake.watch_ends == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.watch_ends == 1  # the server saw the stream end
        assert client.get("fr-1").flow_run_id == "fr-1"  # and the client goes on


def test_handles_of_the_blocking_client_are_blocking(fake):
    fake.state = State.FLOW_RUN_STATE_COMPLETED
    with Client(fake.address, backoff=FAST) as client:
        handle = client.submit(incs, n=1)
        assert isinstance(handle, FlowRunHandle) and handle.created
        assert handle.get().state == "COMPLETED"
    assert isinstance(fake.submits[0], pb.SubmitFlowRunRequest)


async def test_handles_of_the_async_client_are_async(fake):
    async with AsyncClient(fake.address, backoff=FAST) as client:
        handle = await client.submit(incs, n=1)
        assert isinstance(handle, AsyncFlowRunHandle)
        assert (await handle.get()).flow_run_id == "fr-1"


def test_call_modules_wait_only_through_the_transport():
    """Client drives AsyncClient's coroutines without a loop: nothing may await asyncio."""
    import ast
    import importlib

    for name in [
        "_async_client",
        "_connection",
        "_codec",
        "_retry",
        "_handles",
        "_info",
        "_run",
        "_watch_stream",
    ]:
        module = importlib.import_module(f"fleetflow.{name}")
        tree = ast.parse(inspect.getsource(module))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (
                node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
            )
        }
        assert "asyncio" not in imported, f"fleetflow.{name} imports asyncio"
