"""The blocking :class:`Client`: a thin facade over :class:`~fleetflow.AsyncClient`.

Every call is written once, as a coroutine of :class:`AsyncClient`. A
:class:`Client` holds an :class:`AsyncClient` whose transport is blocking
(``_transport.py``): its coroutines never suspend, so each method here runs
the coroutine of the same name to its end in the calling thread
(:func:`~fleetflow._transport.drive`), with no event loop and no thread hop.
The two clients therefore cannot drift apart, a blocking call costs what a
plain blocking gRPC call costs, and a :class:`Client` works the same from any
thread, including one that runs an asyncio loop (the call blocks that loop, as
any blocking call does). ``tests/client/test_client_parity.py`` checks that both
expose the same methods with the same signatures.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from fleetflow._async_client import DEFAULT_ADDRESS, AsyncClient
from fleetflow._connection import DEFAULT_CONNECT_TIMEOUT_S, MAX_MESSAGE_BYTES, KeepAlive
from fleetflow._handles import AsyncFlowRunHandle, FlowRunHandle
from fleetflow._info import FlowRunInfo, TaskCounts, WorkerInfo
from fleetflow._retry import Backoff
from fleetflow._stats import FlowRunStats
from fleetflow._task import Flow
from fleetflow._taskruns import ConcurrencyLimitInfo, DemandInfo, TaskRunInfo, TaskRunPage
from fleetflow._transport import BlockingTransport, drive
from fleetflow.addresses import Address
from fleetflow.api.v1 import common_pb2
from fleetflow.credentials import Credentials
from fleetflow.events import FlowEvent
from fleetflow.store.access import DEFAULT_INLINE_MAX_BYTES
from fleetflow.store.session import SESSION_CHANNEL_OPTIONS, StoreSession
from fleetflow.store.values import needs_store

__all__ = [
    "AsyncClient",
    "AsyncFlowRunHandle",
    "Backoff",
    "Client",
    "DEFAULT_ADDRESS",
    "FlowRunHandle",
    "FlowRunInfo",
    "KeepAlive",
    "MAX_MESSAGE_BYTES",
    "TaskCounts",
    "WorkerInfo",
]

R = TypeVar("R")


class _BlockingAsyncClient(AsyncClient):
    """The :class:`AsyncClient` a :class:`Client` drives: same calls, blocking transport."""

    _transport = BlockingTransport

    # The result store needs an event loop (gRPC's asyncio API, file I/O in
    # threads), which blocking calls do not run on: the session runs its
    # transfers on a private loop thread, over a channel of its own.

    def _store_session(self) -> StoreSession:
        opened: dict[str, Any] = {}

        async def channel() -> Any:
            endpoint = drive(self._conn.ready_endpoint())
            target = str(endpoint.given)
            if target not in opened:
                for old in opened.values():
                    await old.close()
                opened.clear()
                opened[target] = self.credentials.aio_channel(target, SESSION_CHANNEL_OPTIONS)
            return opened[target]

        return StoreSession(channel, owns_channel=True)

    async def _prepare_submit(self, request: Any) -> None:
        if needs_store(request.spec, DEFAULT_INLINE_MAX_BYTES):
            self._store.run(lambda: self._store.prepare_submit(request))

    async def _stored(self, flow_run_id: str, response: Any, fetch: bool) -> Any:
        if not fetch:
            return self._store.run(lambda: self._store.ref(flow_run_id, response.result))
        return self._store.run(lambda: self._store.load(response.result))

    async def close(self) -> None:
        self._store.close()
        await self._conn.close()


class Client:
    """Blocking client of a coordinator: the calls of :class:`AsyncClient`, blocking.

    Safe to use from several threads at once (they share one channel). Use it
    as a context manager, or call :meth:`close`.

    Example::

        with Client("127.0.0.1:50051") as client:
            print(client.run(my_flow, n=10, timeout=600))  # submit and wait, one call
            run = client.submit(my_flow, n=10)  # or keep a handle
            print(run.result(timeout=600))

    Takes the same arguments as :class:`AsyncClient`, with the same bounds:
    connecting gives up after ``connect_timeout_s`` (default 10 s), every call
    has a deadline, keepalive notices a frozen coordinator within 20 s.

    Raises:
        InvalidAddressError: ``address`` is not ``HOST:PORT`` (or a list of them).
        ValueError: ``connect_timeout_s`` is not a positive number of seconds.
        fleetflow.credentials.CredentialsError: a credential file is unusable,
            or a token would travel in plaintext beyond loopback.
    """

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        keepalive: KeepAlive | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._async = _BlockingAsyncClient(
            address,
            backoff=backoff,
            connect_timeout_s=connect_timeout_s,
            keepalive=keepalive,
            credentials=credentials,
        )

    @property
    def address(self) -> str:
        """The coordinator address (or comma list of them) this client was given."""
        return self._async.address

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The coordinator addresses, parsed, in order of preference."""
        return self._async.addresses

    @property
    def credentials(self) -> Credentials:
        """The TLS and token settings of this client's channels."""
        return self._async.credentials

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    @property
    def _stub(self) -> Any:
        """The raw blocking stub of the coordinator in use (connects first); for tests.

        Tests read the unfiltered event stream through it (``WatchFlowRun``
        past the terminal event); applications use the methods.
        """
        return drive(self._async._conn.ready_endpoint()).stub

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Blocking :meth:`AsyncClient.close`."""
        drive(self._async.close())

    def submit(
        self,
        flow: Flow[..., R] | common_pb2.FlowSpec,
        *args: Any,
        idempotency_key: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> FlowRunHandle[R]:
        """Blocking :meth:`AsyncClient.submit`."""
        handle = drive(
            self._async.submit(
                flow, *args, idempotency_key=idempotency_key, priority=priority, **params
            )
        )
        return FlowRunHandle(self, handle.id, handle.created)

    def run(
        self,
        flow: Flow[..., R] | common_pb2.FlowSpec,
        *args: Any,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> R:
        """Blocking :meth:`AsyncClient.run`."""
        return drive(
            self._async.run(
                flow,
                *args,
                timeout=timeout,
                idempotency_key=idempotency_key,
                priority=priority,
                **params,
            )
        )

    def handle(self, flow_run_id: str) -> FlowRunHandle[Any]:
        """A handle on an existing flow run (not checked until used)."""
        return FlowRunHandle(self, flow_run_id, created=False)

    def get(self, flow_run_id: str, *, wait_s: float = 0.0) -> FlowRunInfo:
        """Blocking :meth:`AsyncClient.get`."""
        return drive(self._async.get(flow_run_id, wait_s=wait_s))

    def list_flow_runs(self) -> list[FlowRunInfo]:
        """Blocking :meth:`AsyncClient.list_flow_runs`."""
        return drive(self._async.list_flow_runs())

    def list_workers(self) -> list[WorkerInfo]:
        """Blocking :meth:`AsyncClient.list_workers`."""
        return drive(self._async.list_workers())

    def cancel(self, flow_run_id: str) -> int:
        """Blocking :meth:`AsyncClient.cancel`."""
        return drive(self._async.cancel(flow_run_id))

    def cancel_task_run(self, task_run_id: int) -> int:
        """Blocking :meth:`AsyncClient.cancel_task_run`."""
        return drive(self._async.cancel_task_run(task_run_id))

    def get_task_run(self, task_run_id: int) -> TaskRunInfo:
        """Blocking :meth:`AsyncClient.get_task_run`."""
        return drive(self._async.get_task_run(task_run_id))

    def list_task_runs(
        self,
        flow_run_id: str,
        *,
        states: Sequence[str] = (),
        task_name: str = "",
        index: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> TaskRunPage:
        """Blocking :meth:`AsyncClient.list_task_runs`."""
        return drive(
            self._async.list_task_runs(
                flow_run_id,
                states=states,
                task_name=task_name,
                index=index,
                offset=offset,
                limit=limit,
            )
        )

    def get_flow_run_stats(self, flow_run_id: str) -> FlowRunStats:
        """Blocking :meth:`AsyncClient.get_flow_run_stats`."""
        return drive(self._async.get_flow_run_stats(flow_run_id))

    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        """Blocking :meth:`AsyncClient.set_concurrency_limit`."""
        drive(self._async.set_concurrency_limit(tag, limit))

    def list_concurrency_limits(self) -> list[ConcurrencyLimitInfo]:
        """Blocking :meth:`AsyncClient.list_concurrency_limits`."""
        return drive(self._async.list_concurrency_limits())

    def demand(self) -> list[DemandInfo]:
        """Blocking :meth:`AsyncClient.demand`."""
        return drive(self._async.demand())

    def prune(self, older_than_s: float) -> list[str]:
        """Blocking :meth:`AsyncClient.prune`."""
        return drive(self._async.prune(older_than_s))

    def wait(self, flow_run_id: str, timeout: float | None = None) -> str:
        """Blocking :meth:`AsyncClient.wait`."""
        return drive(self._async.wait(flow_run_id, timeout=timeout))

    def result(self, flow_run_id: str, timeout: float | None = None, *, fetch: bool = True) -> Any:
        """Blocking :meth:`AsyncClient.result`."""
        return drive(self._async.result(flow_run_id, timeout=timeout, fetch=fetch))

    def watch(self, flow_run_id: str, after_seq: int = 0) -> Iterator[FlowEvent]:
        """Blocking :meth:`AsyncClient.watch`: an iterator that blocks for each batch."""
        batches = self._async._watch_batches(flow_run_id, after_seq)
        try:
            while True:
                try:
                    batch = drive(batches.__anext__())
                except StopAsyncIteration:
                    return
                yield from batch
        finally:
            drive(batches.aclose())  # ends the stream of an abandoned iterator


def _copy_docs(facade: type, source: type) -> None:
    """Give each facade method the full docstring of the coroutine it drives."""
    for name, method in vars(facade).items():
        original = getattr(source, name, None)
        if name.startswith("_") or original is None or not callable(method):
            continue
        if (method.__doc__ or "").startswith("Blocking"):
            parts = (method.__doc__, original.__doc__ or "")
            method.__doc__ = "\n\n".join(inspect.cleandoc(part) for part in parts)


_copy_docs(Client, AsyncClient)
