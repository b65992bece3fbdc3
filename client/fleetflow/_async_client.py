"""The asyncio client of the coordinator; every call lives here, once.

:class:`~fleetflow.Client` is a blocking facade over :class:`AsyncClient`
(see ``_client.py``), so the two cannot drift apart.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import grpc

from fleetflow._codec import (
    LONG_POLL_GRACE_S,
    STORED,
    check_int,
    check_wait,
    decode_outcome,
    get_request,
    poll_done,
    poll_wait_s,
    submit_request,
)
from fleetflow._connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    RPC_TIMEOUT_S,
    Connection,
    KeepAlive,
)
from fleetflow._handles import AsyncFlowRunHandle
from fleetflow._info import FlowRunInfo, WorkerInfo, flow_state_name
from fleetflow._retry import Backoff, deadline_after
from fleetflow._run import run_flow
from fleetflow._stats import FlowRunStats
from fleetflow._task import Flow
from fleetflow._taskruns import (
    ConcurrencyLimitInfo,
    DemandInfo,
    TaskRunInfo,
    TaskRunPage,
    TaskRunSummary,
)
from fleetflow._transport import AioTransport, BlockingTransport
from fleetflow._watch_stream import watch_batches
from fleetflow.addresses import Address, parse_addresses
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.credentials import Credentials
from fleetflow.events import FlowEvent
from fleetflow.store.session import StoreSession

__all__ = ["AsyncClient", "DEFAULT_ADDRESS"]


R = TypeVar("R")

#: Address a client connects to when given none.
DEFAULT_ADDRESS = "127.0.0.1:50051"

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class AsyncClient:
    """asyncio client of a coordinator.

    Channels are opened on first use, inside the running event loop. Every
    call has a deadline (60 s; a long poll gets its wait plus 10 s; a caller's
    timeout, when shorter, wins). Connecting is bounded: a client that never
    reached the coordinator raises :class:`~fleetflow.CoordinatorUnreachable`
    after ``connect_timeout_s``, naming each address and whether it was
    refused, unresolvable or silent. Once connected, calls that fail with
    ``UNAVAILABLE`` (a restart, a lost connection, a standby) are retried with
    exponential backoff and jitter for up to ``backoff.give_up_s`` (see
    :class:`~fleetflow.Backoff`), so a coordinator restart is invisible to
    callers as long as it comes back within that budget. Keepalive pings
    notice a dead or frozen coordinator within ``keepalive.bound_s``.

    Example::

        async with AsyncClient("127.0.0.1:50051") as client:
            run = await client.submit(my_flow, n=10)
            async for event in run.events():
                print(event.kind)
            print(await run.result())

    Args:
        address: The coordinator's ``HOST:PORT``; several coordinators (an
            active one and standbys) as ``"A:P,B:P"`` or a list. A DNS name
            that resolves to several addresses counts as all of them. The
            rules are :func:`fleetflow.addresses.parse_addresses`'.
        backoff: Retry policy for ``UNAVAILABLE``; default :class:`Backoff()`.
        connect_timeout_s: How long a client that never reached a coordinator
            tries to connect before raising, seconds. Default 10.
        keepalive: Keepalive pings; default :class:`KeepAlive()` (a dead or
            frozen coordinator is noticed within 20 s).
        credentials: TLS and token; default from ``FLEETFLOW_TLS_CA``,
            ``FLEETFLOW_TOKEN`` and the like (:class:`~fleetflow.credentials.Credentials`).

    Raises:
        InvalidAddressError: ``address`` is not ``HOST:PORT`` (or a list of them).
        ValueError: ``connect_timeout_s`` is not a positive number of seconds.
        fleetflow.credentials.CredentialsError: a credential file is unusable,
            or a token would travel in plaintext beyond loopback.
    """

    #: How this client's calls reach gRPC; ``Client`` uses a blocking one.
    _transport: type[AioTransport] | type[BlockingTransport] = AioTransport

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        keepalive: KeepAlive | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if not (isinstance(connect_timeout_s, int | float) and 0 < connect_timeout_s < math.inf):
            raise ValueError(
                f"connect_timeout_s must be a positive number of seconds, got {connect_timeout_s!r}"
            )
        self.address = address if isinstance(address, str) else ",".join(address)
        self._conn = Connection(
            parse_addresses(address),
            transport=self._transport(),
            backoff=backoff or Backoff(),
            rng=random.Random(),
            connect_timeout_s=float(connect_timeout_s),
            keepalive=keepalive,
            credentials=credentials or Credentials.from_options(),
        )
        #: The result store, opened on first need (a large constant or result).
        self._store = self._store_session()

    def _store_session(self) -> StoreSession:
        async def channel() -> Any:
            return (await self._conn.ready_endpoint()).channel

        return StoreSession(channel)

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The coordinator addresses, parsed, in order of preference."""
        return self._conn.addresses

    @property
    def credentials(self) -> Credentials:
        """The TLS and token settings of this client's channels."""
        return self._conn.credentials

    def __repr__(self) -> str:
        return f"<AsyncClient {self.address}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight end with an error, later calls raise ValueError."""
        await self._store.aclose()
        await self._conn.close()

    async def submit(
        self,
        flow: Flow[..., R] | common_pb2.FlowSpec,
        *args: Any,
        idempotency_key: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> AsyncFlowRunHandle[R]:
        """Record ``flow`` with these parameters and submit it.

        Args:
            flow: A ``@flow`` function (or a ``FlowSpec`` built before).
            *args: Positional flow parameters.
            idempotency_key: Resubmitting with the same key returns the same
                flow run, in whatever state it is (a cancelled run stays
                cancelled). A key a run of another flow already has is
                refused (``InvalidFlowError``). A random key is used when
                omitted, so that retries of this call never start a second run.
            priority: Higher is leased first among ready task runs (default 0).
            **params: Keyword flow parameters.

        Returns:
            A handle on the new (or matched) flow run.

        Raises:
            TypeError: the parameters do not fit the flow (raised while recording).
            InvalidFlowError: the coordinator rejected the flow graph.
            RPCError: the coordinator failed otherwise or stayed unavailable.
        """
        request = submit_request(flow, args, params, idempotency_key, priority)
        await self._prepare_submit(request)
        response = await self._conn.unary("SubmitFlowRun", request)
        return AsyncFlowRunHandle(self, response.flow_run_id, response.created)

    async def run(
        self,
        flow: Flow[..., R] | common_pb2.FlowSpec,
        *args: Any,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> R:
        """Submit ``flow`` with these parameters, wait until it ends and return its result.

        ``submit(...).result()`` in one call to the coordinator, which answers
        once the flow run has ended (a one-task flow costs one round trip, not
        two). It raises what :meth:`result` raises. An interrupted call
        (Ctrl-C, or the task awaiting it cancelled) cancels the flow run it
        started before the interrupt goes on; use :meth:`submit` for a flow
        run that should outlive its caller. A flow parameter named like an
        argument below is passed positionally, or use ``flow.build(...)``.

        Example::

            total = await client.run(my_flow, n=10, timeout=600)

        Args:
            flow: A ``@flow`` function (or a ``FlowSpec`` built before).
            *args: Positional flow parameters.
            timeout: Give up waiting after this many seconds (the flow run
                goes on); None waits until it ends.
            idempotency_key: As :meth:`submit`: a call with the key of an
                existing flow run waits for that one (and an interrupt leaves
                it running unless this call created it). A random key is used
                when omitted, so retries never start a second run.
            priority: Higher is leased first among ready task runs (default 0).
            **params: Keyword flow parameters.

        Returns:
            The flow's return value (a map output is a list, in input order).

        Raises:
            TypeError: the parameters do not fit the flow (raised while recording).
            InvalidFlowError: the coordinator rejected the flow graph.
            Exception: the flow run failed: its first task failure, as :meth:`result`.
            FlowRunFailed: the flow run failed without a task error.
            FlowRunCancelled: the flow run was cancelled.
            FlowRunTimeout: ``timeout`` passed while the flow run goes on (a
                ``TimeoutError`` naming it: ``exc.flow_run_id``).
            TimeoutError: ``timeout`` passed before the submission was answered
                (the flow run may exist: ``submit`` with the same ``idempotency_key``
                finds it).
            RPCError: the coordinator failed otherwise or stayed unavailable.
            fleetflow.StoredObjectError: a stored part of the result is
                missing or damaged (the message names it).
        """
        deadline = deadline_after(timeout)
        request = submit_request(flow, args, params, idempotency_key, priority)
        await self._prepare_submit(request)
        return await run_flow(self, request, deadline, own_key=idempotency_key is None)

    def handle(self, flow_run_id: str) -> AsyncFlowRunHandle[Any]:
        """A handle on an existing flow run (not checked until used)."""
        return AsyncFlowRunHandle(self, flow_run_id, created=False)

    async def get(self, flow_run_id: str, *, wait_s: float = 0.0) -> FlowRunInfo:
        """Fetch a flow run's state and task run counts.

        Args:
            flow_run_id: The flow run.
            wait_s: Long poll: answer once the run has ended or after this
                many seconds, whichever comes first. Default 0 (at once).

        Raises:
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        wait_s = check_wait("wait_s", wait_s)
        request = get_request(flow_run_id, include_result=False, wait_s=wait_s)
        response = await self._conn.unary(
            "GetFlowRun",
            request,
            flow_run_id=flow_run_id,
            timeout_s=wait_s + LONG_POLL_GRACE_S if wait_s else RPC_TIMEOUT_S,
        )
        return FlowRunInfo.from_proto(response.info)

    async def list_flow_runs(self) -> list[FlowRunInfo]:
        """All flow runs the coordinator knows, in its order.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = await self._conn.unary("ListFlowRuns", pb.ListFlowRunsRequest())
        return [FlowRunInfo.from_proto(info) for info in response.flow_runs]

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers connected to the coordinator now.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = await self._conn.unary("ListWorkers", pb.ListWorkersRequest())
        return [WorkerInfo.from_proto(info) for info in response.workers]

    async def cancel(self, flow_run_id: str) -> int:
        """Cancel a flow run; nothing new starts once this returns.

        Returns:
            How many task runs were cancelled.

        Raises:
            FlowRunNotFound: no such flow run.
            RPCError: the coordinator failed or stayed unavailable.
        """
        request = pb.CancelFlowRunRequest(flow_run_id=flow_run_id)
        response = await self._conn.unary("CancelFlowRun", request, flow_run_id=flow_run_id)
        return response.cancelled

    async def cancel_task_run(self, task_run_id: int) -> int:
        """Cancel one task run; its dependents end UPSTREAM_FAILED. Returns 1 or 0.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        task_run_id = check_int("task_run_id", task_run_id, low=0, high=2**64 - 1)
        request = pb.CancelTaskRunRequest(task_run_id=task_run_id)
        return (await self._conn.unary("CancelTaskRun", request)).cancelled

    async def get_task_run(self, task_run_id: int) -> TaskRunInfo:
        """One task run with its attempt history (worker, times, outcome, error).

        Raises:
            RPCError: no such task run (NOT_FOUND), or the coordinator failed.
        """
        task_run_id = check_int("task_run_id", task_run_id, low=0, high=2**64 - 1)
        request = pb.GetTaskRunRequest(task_run_id=task_run_id)
        return TaskRunInfo.from_proto(await self._conn.unary("GetTaskRun", request))

    async def list_task_runs(
        self,
        flow_run_id: str,
        *,
        states: Sequence[str] = (),
        task_name: str = "",
        index: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> TaskRunPage:
        """One page of a flow run's task runs, in (node, index) order.

        Args:
            flow_run_id: The flow run.
            states: Only these states (``"FAILED"``, ``"TIMED_OUT"``, ...); empty for all.
            task_name: Only this task's task runs; "" for all.
            index: Only this map index; None for all.
            offset: Matching task runs to skip.
            limit: Task runs per page, at most 500.

        Raises:
            RPCError: no such flow run (NOT_FOUND), a limit over 500 or an
                unknown state (INVALID_ARGUMENT), or the coordinator failed.
        """
        try:
            codes = [common_pb2.TaskRunState.Value(f"TASK_RUN_STATE_{s.upper()}") for s in states]
        except ValueError as exc:
            raise ValueError(f"unknown task run state in {list(states)}: {exc}") from None
        check_int("offset", offset, low=0, high=2**64 - 1)
        check_int("limit", limit, low=0, high=2**32 - 1)  # the coordinator enforces 500
        if index is not None:
            check_int("index", index, low=0, high=2**32 - 1)
        request = pb.ListTaskRunsRequest(
            flow_run_id=flow_run_id,
            states=codes,
            task_name=task_name,
            offset=offset,
            limit=limit,
        )
        if index is not None:
            request.index = index
        response = await self._conn.unary("ListTaskRuns", request)
        return TaskRunPage(
            [TaskRunSummary.from_proto(t) for t in response.task_runs], response.total, offset
        )

    async def get_flow_run_stats(self, flow_run_id: str) -> FlowRunStats:
        """Measured usage per task against its request (with advice), and time per state.

        Raises:
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        request = pb.GetFlowRunStatsRequest(flow_run_id=flow_run_id)
        response = await self._conn.unary("GetFlowRunStats", request, flow_run_id=flow_run_id)
        return FlowRunStats.from_proto(response)

    async def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        """Allow at most ``limit`` task runs tagged ``tag`` at once (None removes it).

        A limit of 0 holds the tagged task runs until it is raised or removed.

        Raises:
            ValueError: ``limit`` is not a whole number >= 0 or None.
            RPCError: the coordinator rejected it or failed.
        """
        if limit is not None:  # -1 on the wire removes a limit: never by accident
            check_int("limit", limit, low=0, high=2**31 - 1)
        request = pb.SetConcurrencyLimitRequest(tag=tag, limit=-1 if limit is None else limit)
        await self._conn.unary("SetConcurrencyLimit", request)

    async def list_concurrency_limits(self) -> list[ConcurrencyLimitInfo]:
        """Every named concurrency limit, with how many run and wait now, and its source.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = await self._conn.unary(
            "ListConcurrencyLimits", pb.ListConcurrencyLimitsRequest()
        )
        return [ConcurrencyLimitInfo.from_proto(m) for m in response.limits]

    async def demand(self) -> list[DemandInfo]:
        """Queued demand per worker pool and resource shape (what an autoscaler adds).

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        response = await self._conn.unary("GetDemand", pb.GetDemandRequest())
        return [DemandInfo.from_proto(d) for d in response.demand]

    async def prune(self, older_than_s: float) -> list[str]:
        """Delete finished flow runs that ended more than ``older_than_s`` seconds ago.

        Returns:
            The ids of the flow runs deleted.

        Raises:
            RPCError: the coordinator failed or stayed unavailable.
        """
        request = pb.PruneFlowRunsRequest(older_than_seconds=older_than_s)
        return list((await self._conn.unary("PruneFlowRuns", request)).pruned_flow_run_ids)

    async def _poll_until_ended(
        self, flow_run_id: str, deadline: float | None, *, include_result: bool
    ) -> pb.GetFlowRunResponse:
        while True:
            wait_s = poll_wait_s(deadline)
            started = time.monotonic()
            response = await self._conn.unary(
                "GetFlowRun",
                get_request(flow_run_id, include_result=include_result, wait_s=wait_s),
                flow_run_id=flow_run_id,
                deadline=deadline,
                timeout_s=wait_s + LONG_POLL_GRACE_S,
            )
            pause = poll_done(response, flow_run_id, deadline, time.monotonic() - started)
            if pause is None:
                return response
            await self._conn.sleep(pause)

    async def wait(self, flow_run_id: str, timeout: float | None = None) -> str:
        """Wait until a flow run ends.

        Args:
            flow_run_id: The flow run.
            timeout: Give up after this many seconds; None waits forever.

        Returns:
            The final state: ``"COMPLETED"``, ``"FAILED"`` or ``"CANCELLED"``.

        Raises:
            FlowRunTimeout: the run did not end within ``timeout`` (a ``TimeoutError``).
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
        """
        deadline = deadline_after(timeout)
        response = await self._poll_until_ended(flow_run_id, deadline, include_result=False)
        return flow_state_name(response.info.state)

    async def _prepare_submit(self, request: Any) -> None:
        """Store the spec's constants over the inline limit before it is sent."""
        await self._store.prepare_submit(request)

    async def _stored(self, flow_run_id: str, response: Any, fetch: bool) -> Any:
        """The result of ``response``: downloaded (``fetch``) or described as a ResultRef."""
        if not fetch:
            return await self._store.ref(flow_run_id, response.result)
        return await self._store.load(response.result)

    async def result(
        self, flow_run_id: str, timeout: float | None = None, *, fetch: bool = True
    ) -> Any:
        """Wait until a flow run ends and return its result.

        A result in the result store is downloaded now, its checksum
        verified; ``fetch=False`` returns a :class:`~fleetflow.ResultRef`
        saying where it is instead, without reading stored bytes.

        Args:
            flow_run_id: The flow run.
            timeout: Give up after this many seconds; None waits forever.
            fetch: Download a stored result (default) or describe it.

        Returns:
            The flow's return value (a map output is a list, in input order),
            or its :class:`~fleetflow.ResultRef` with ``fetch=False``.

        Raises:
            Exception: the flow run failed: its first task failure, re-raised
                as the original exception type with the remote traceback as a
                note (or :class:`~fleetflow.RemoteTaskError` when that type
                cannot be unpickled here).
            FlowRunFailed: the flow run failed without a task error.
            FlowRunCancelled: the flow run was cancelled.
            FlowRunTimeout: the run did not end within ``timeout`` (a ``TimeoutError``).
            FlowRunNotFound: no flow run has this id.
            RPCError: the coordinator failed or stayed unavailable.
            fleetflow.StoredObjectError: a stored part of the result is
                missing or damaged (the message names it).
        """
        deadline = deadline_after(timeout)
        response = await self._poll_until_ended(flow_run_id, deadline, include_result=True)
        return await self._outcome(flow_run_id, response, fetch)

    async def _outcome(self, flow_run_id: str, response: pb.GetFlowRunResponse, fetch: bool) -> Any:
        """The result an ended flow run's answer holds (or its error, raised)."""
        value = decode_outcome(response)
        if value is STORED or not fetch:
            return await self._stored(flow_run_id, response, fetch)
        return value

    async def watch(self, flow_run_id: str, after_seq: int = 0) -> AsyncIterator[FlowEvent]:
        """Iterate over a flow run's events, live, until its terminal event.

        A lost stream (the coordinator restarted, went away, or froze: keepalive
        notices within ``keepalive.bound_s``) reconnects by itself, also to
        another of several coordinators, resuming after the last event it
        yielded, so no event is lost or repeated.

        Args:
            flow_run_id: The flow run.
            after_seq: Start after this event ``seq``; 0 replays from the start.

        Yields:
            Events in ``seq`` order; the last one is terminal.

        Raises:
            FlowRunNotFound: no flow run has this id.
            WatchInterrupted: the stream was lost and the coordinator stayed
                unreachable (or answered ``UNAVAILABLE``) past the retry budget
                (``backoff.give_up_s``, 30 s, from the loss); every event up to
                its ``last_seq`` was delivered once, and ``watch(flow_run_id,
                after_seq=exc.last_seq)`` resumes.
            RPCError: the coordinator failed otherwise.
        """
        async for batch in self._watch_batches(flow_run_id, after_seq):
            for event in batch:
                yield event

    def _watch_batches(self, flow_run_id: str, after_seq: int) -> AsyncIterator[list[FlowEvent]]:
        """:meth:`watch` a batch at a time (what the blocking facade pulls per step)."""
        return watch_batches(self._conn, flow_run_id, after_seq)
