"""WorkerSession: one long-lived stream per worker for its hot-path calls.

The calls are LeaseTasks, ReportOutcomes and ReleaseLeases.

A unary call costs the coordinator a new HTTP/2 stream, its headers, the
interceptor's admission and a status each time; a message on an open stream
costs about half of that (see benchmarks/PROFILE.md, "Issue 18"). A worker's
hot path is two calls per task run (its long poll answered, its outcome
reported), so the worker sends them as messages of one session instead.

Rules (docs/architecture.md, "Worker sessions"):

* The edge interceptor admits the stream once, at its start (credential and
  the ``worker`` role), size-checks and decodes every message; a malformed
  message, or one without an id or a call (bounds), ends the stream with
  INVALID_ARGUMENT.
* Each request is checked against the bounds table and handled by the very
  servicer method of its unary call (fencing, lease TTLs, identity binding,
  versions, group commit all as there); a refusal is answered for that id
  with the status the unary call would have got, and the stream goes on. A
  coordinator that stops serving (stopping, deposed, its store failing) ends
  the stream with UNAVAILABLE instead, so the worker moves on.
* Every request runs as its own task, so a long poll never holds up a report
  behind it. At most :data:`MAX_OUTSTANDING` requests are unanswered at
  once, at most one of them a LeaseTasks; more ends the stream.
* Answers go out through one writer at a time, in the order they are ready;
  at most :data:`MAX_OUTSTANDING` wait behind it, and a write the worker
  does not take within :func:`write_timeout_s` ends the stream: a worker
  that stops reading never stalls the coordinator.
* The stream is bound to the worker id of its first request (after the same
  ownership check as the unary calls); a later request naming another id is
  refused. A new session of a worker id ends the older one
  (FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from fleetflow.api.v1 import worker_service_pb2 as ws

from fleetflow_coordinator.bounds import BOUNDS, check_request, request_bytes_limit
from fleetflow_coordinator.errors import (
    CoordinatorError,
    FailedPrecondition,
    InvalidRequest,
    LimitExceeded,
    Unavailable,
    status_for,
)
from fleetflow_coordinator.lease_wire import varint as _varint
from fleetflow_coordinator.store.base import NotLeader

if TYPE_CHECKING:
    from fleetflow_coordinator.servicers import WorkerServicer

__all__ = ["MAX_OUTSTANDING", "Session", "Sessions", "write_timeout_s"]

log = structlog.get_logger(__name__)

#: Most requests of one session unanswered at once (the worker needs three:
#: a long poll, a report, a release); also the most answers queued for writing.
MAX_OUTSTANDING = int(BOUNDS["session_requests"].limit)
#: Status messages in answers are cut to this many characters (as the edge's).
_MAX_MESSAGE = 1024
_SMALL_LIMIT = request_bytes_limit("/fleetflow.api.v1.WorkerService/LeaseTasks")
_CALLS = {
    "lease_tasks": "LeaseTasks",
    "report_outcomes": "ReportOutcomes",
    "release_leases": "ReleaseLeases",
}
#: {call: the tag byte of its answer in WorkerDown (field number, length-delimited)}
_ANSWER_TAGS = {
    kind: bytes(((ws.WorkerDown.DESCRIPTOR.fields_by_name[kind].number << 3) | 2,))
    for kind in _CALLS
}


def _answer_bytes(rid: int, kind: str, response: Any) -> bytes:
    """A serialized WorkerDown with ``response`` as its ``kind`` answer.

    Framed by hand around the response's own bytes: building a WorkerDown
    would deep-copy the response (a lease answer of many leases) first, about
    as costly again as serializing it.
    """
    body = response.SerializeToString()
    return b"\x08" + _varint(rid) + _ANSWER_TAGS[kind] + _varint(len(body)) + body


def write_timeout_s(lease_ttl_s: float) -> float:
    """How long one answer may wait for the worker to take it, seconds: a lease TTL, at least 5."""
    return max(5.0, lease_ttl_s)


class Sessions:
    """The open sessions, one per worker id."""

    def __init__(self) -> None:
        self._by_worker: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_worker)

    def bind(self, worker_id: str, session: Session) -> None:
        """Make ``session`` the one of ``worker_id``, ending the one it replaces."""
        old = self._by_worker.get(worker_id)
        self._by_worker[worker_id] = session
        if old is not None and old is not session:
            log.info("worker_session_replaced", worker_id=worker_id)
            old.end(
                FailedPrecondition(
                    f"a newer WorkerSession of worker {worker_id!r} replaced this one"
                )
            )

    def drop(self, worker_id: str | None, session: Session) -> None:
        """Forget ``session`` (it ended) unless a newer one replaced it."""
        if worker_id is not None and self._by_worker.get(worker_id) is session:
            del self._by_worker[worker_id]


class Session:
    """One WorkerSession stream: reads requests, runs each as a task, writes answers.

    Args:
        servicer: The worker service whose unary handlers serve the requests.
        context: The stream's gRPC context (answers are written with it).
        sessions: Where the session registers under its worker id.
        closing: Set when the coordinator stops serving (stop, crash,
            deposition): the session ends with UNAVAILABLE.
        leads: Whether this coordinator surely still leads (hot standby),
            checked for every request; None: always.
    """

    def __init__(
        self,
        servicer: WorkerServicer,
        context: grpc.aio.ServicerContext,
        sessions: Sessions,
        closing: asyncio.Event,
        leads: Callable[[], bool] | None = None,
    ) -> None:
        self.servicer = servicer
        self.context = context
        self.sessions = sessions
        self.closing = closing
        self.leads = leads
        self.worker_id: str | None = None
        #: {request id: the task answering it}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._lease_id = 0
        self._queue: collections.deque[ws.WorkerDown | bytes] = collections.deque()
        self._writing = False
        #: Resolved (and replaced) each time a write run ends.
        self._idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write_timeout_s = write_timeout_s(servicer.rt.settings.lease_ttl_s)
        self._handlers: dict[str, Callable[[Any, Any], Awaitable[Any]]] = {
            "lease_tasks": servicer.LeaseTasks,
            "report_outcomes": servicer.ReportOutcomes,
            "release_leases": servicer.ReleaseLeases,
        }

    def end(self, error: BaseException | None) -> None:
        """End the stream: with ``error``'s status, or OK for None."""
        if not self._ended.done():
            if error is None:
                self._ended.set_result(None)
            else:
                self._ended.set_exception(error)

    async def serve(self, requests: AsyncIterator[ws.WorkerUp]) -> None:
        """Serve the stream until the worker closes it or it is ended.

        Raises:
            CoordinatorError: the stream ends with this error's status (the
                edge interceptor maps it); a decoding error of the edge too.
        """
        reader = asyncio.ensure_future(self._read(requests))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((reader, self._ended, closing), return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not self._ended.done():
                reader.result()  # a protocol violation or a malformed message ends it here
                # the worker closed its side: answer what it asked, then end
                while (self._tasks or self._writing) and not (self._ended.done() or closing.done()):
                    waits = [*self._tasks.values()] or [asyncio.ensure_future(asyncio.sleep(0.01))]
                    await asyncio.wait(
                        (*waits, self._ended, closing), return_when=asyncio.FIRST_COMPLETED
                    )
            if closing.done() and not self._ended.done():
                reader.cancel()
                await self._wind_down()
                raise Unavailable("the coordinator is stopping or stood down; connect again")
            if self._ended.done():
                self._ended.result()  # raises the error that ended the stream
        finally:
            reader.cancel()
            closing.cancel()
            for task in self._tasks.values():
                task.cancel()
            if self._ended.done():
                self._ended.exception()  # retrieved: no "never retrieved" warning
            else:
                self._ended.set_result(None)  # the writer stops after its write
            self.sessions.drop(self.worker_id, self)
            if self._writing:  # the status must not race a write in flight (the call hangs)
                await asyncio.wait((self._idle,), timeout=self._write_timeout_s + 1)

    async def _wind_down(self) -> None:
        """Cancel the long poll; let reports and releases in flight be answered (bounded)."""
        if self._lease_id:
            self._tasks[self._lease_id].cancel()
        if self._tasks:
            await asyncio.wait([*self._tasks.values()], timeout=1.0)

    async def _read(self, requests: AsyncIterator[ws.WorkerUp]) -> None:
        loop = asyncio.get_running_loop()
        async for up in requests:  # the edge checked the envelope (bounds._worker_up)
            if self.leads is not None and not self.leads():
                raise NotLeader("the leadership may have run out")
            kind = up.WhichOneof("call")
            if kind == "cancel":
                task = self._tasks.get(up.cancel)
                if task is not None:
                    task.cancel()
                continue
            rid = up.id
            if rid in self._tasks:
                raise InvalidRequest(f"WorkerUp.id {rid}: a request with this id is unanswered")
            if len(self._tasks) >= MAX_OUTSTANDING:
                raise LimitExceeded(
                    f"WorkerSession: over {MAX_OUTSTANDING} requests unanswered (session_requests)"
                )
            request = getattr(up, kind)
            if kind == "lease_tasks":
                if self._lease_id:
                    raise InvalidRequest(
                        "WorkerSession: a LeaseTasks is already unanswered (at most one)"
                    )
            try:
                if kind != "report_outcomes" and up.ByteSize() > _SMALL_LIMIT:
                    raise LimitExceeded(
                        f"request: {up.ByteSize()} bytes, over the limit of {_SMALL_LIMIT} "
                        f"bytes for {_CALLS[kind]} (small_request_bytes)"
                    )
                check_request(request)
                self._bind(request.worker_id)
            except CoordinatorError as exc:
                self._track(rid, loop.create_task(self._refuse(rid, kind, exc)))
                continue
            if kind == "lease_tasks":
                self._lease_id = rid
            self._track(rid, loop.create_task(self._answer(rid, kind, request)))

    def _track(self, rid: int, task: asyncio.Task[None]) -> None:
        """Hold ``task`` as request ``rid``'s answer until it ends.

        The task forgets itself when it ends (before sending its answer, so the
        worker may ask again at once); a task cancelled before it ever ran (a
        ``cancel`` message right behind its request) never runs that code, so
        its end is also caught here, or its id would stay unanswered for good.
        """
        self._tasks[rid] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(rid) is done:
                del self._tasks[rid]
                if rid == self._lease_id:
                    self._lease_id = 0

        task.add_done_callback(forget)

    def _bind(self, worker_id: str) -> None:
        if self.worker_id is None:
            self.servicer._check_owner("WorkerSession", worker_id)
            self.worker_id = worker_id
            self.sessions.bind(worker_id, self)
        elif worker_id != self.worker_id:
            raise InvalidRequest(
                f"worker_id {worker_id[:128]!r}: this WorkerSession belongs to worker "
                f"{self.worker_id!r} (its first request's)"
            )

    async def _refuse(self, rid: int, kind: str, exc: CoordinatorError) -> None:
        try:
            down = self._refusal(rid, kind, exc)
        finally:
            del self._tasks[rid]
        await self._send(down)

    async def _answer(self, rid: int, kind: str, request: Any) -> None:
        down: ws.WorkerDown | bytes | None
        try:
            response = await self._handlers[kind](request, self.context)
        except asyncio.CancelledError:
            return  # the worker abandoned it, or the session ended: no answer
        except Exception as exc:  # noqa: BLE001 - every error goes through the table
            down = self._refusal(rid, kind, exc)
            if down is None:
                return
        else:
            down = _answer_bytes(rid, kind, response)
        finally:
            del self._tasks[rid]
            if rid == self._lease_id:
                self._lease_id = 0
        await self._send(down)

    def _refusal(self, rid: int, kind: str, exc: BaseException) -> ws.WorkerDown | None:
        """The answer refusing request ``rid`` for ``exc``; None when the stream ends instead."""
        status = status_for(exc)
        if status is None:
            log.error("rpc_internal_error", method=f"WorkerSession/{_CALLS[kind]}", exc_info=exc)
            code = grpc.StatusCode.INTERNAL
            message = f"internal error in the coordinator ({type(exc).__name__}); it is logged"
        else:
            code, message = status
            if code == grpc.StatusCode.UNAVAILABLE:  # stopping, deposed, store down: move on
                self.end(exc)
                return None
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        return ws.WorkerDown(id=rid, error=ws.SessionError(code=code.value[0], message=message))

    async def _send(self, down: ws.WorkerDown | bytes | None) -> None:
        """Write ``down``, and whatever queues up meanwhile; or queue it behind the writer."""
        if down is None or self._ended.done():
            return
        if self._writing:
            if len(self._queue) >= MAX_OUTSTANDING:
                self.end(LimitExceeded("the worker does not read its WorkerSession answers"))
            else:
                self._queue.append(down)
            return
        self._writing = True
        try:
            while True:
                try:
                    async with asyncio.timeout(self._write_timeout_s):
                        await self.context.write(down)
                except TimeoutError:
                    self.end(
                        LimitExceeded(
                            f"the worker did not take an answer for {self._write_timeout_s:g} s"
                        )
                    )
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the stream is gone
                    self.end(Unavailable(f"WorkerSession write failed: {exc}"))
                    return
                if not self._queue or self._ended.done():
                    return
                down = self._queue.popleft()
        finally:
            self._writing = False
            self._idle.set_result(None)
            self._idle = asyncio.get_running_loop().create_future()
