"""The worker's end of WorkerSession: its hot-path calls as messages of one stream.

:class:`SessionStub` looks like the WorkerService stub the worker's loops
call. LeaseTasks, ReportOutcomes and ReleaseLeases go over one long-lived
WorkerSession stream (a message each way instead of a unary call: about half
the coordinator's CPU and round trip, see benchmarks/PROFILE.md, "Issue 18");
every other call (RegisterWorker, Heartbeat) stays unary.

* Each request gets an id and waits for the answer with that id, up to the
  timeout its unary call would have had. A refusal of the request comes back
  as a :class:`grpc.aio.AioRpcError` with the status the unary call would
  have ended with, so the callers' handling (backoff, re-registration,
  batch splitting) is unchanged.
* A broken stream (coordinator restarted, connection lost, a request
  unanswered past its timeout) fails every request waiting on it with the
  stream's status; the callers retry with their backoff, and the next request
  opens a new stream. The reporter keeps every outcome until it is
  acknowledged, so none is lost; an outcome whose answer was lost is sent
  again and acknowledged as stale or accepted (at-least-once reporting,
  fenced by the attempt number, as for the unary call).
* A caller that gives up on a request (the lease loop cancelled by a drain)
  sends a ``cancel`` for it, as cancelling a unary call would.
* A coordinator without the RPC (older, or ``worker_sessions = false``)
  answers UNIMPLEMENTED: the request is sent again as its unary call, and the
  worker stays on the unary calls for that coordinator until it registers
  again (it may have been upgraded meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import structlog
from fleetflow.api.v1 import worker_service_pb2 as ws

from fleetflow_worker._rpc import CoordinatorConnection

__all__ = ["SessionStub"]

log = structlog.get_logger()

_PATH = "/fleetflow.api.v1.WorkerService/WorkerSession"
#: {unary method: (WorkerUp field number, answer field name)}
_CALLS = {
    "LeaseTasks": (2, "lease_tasks"),
    "ReportOutcomes": (3, "report_outcomes"),
    "ReleaseLeases": (4, "release_leases"),
}
_CANCEL_TAG = b"\x28"  # WorkerUp.cancel: field 5, varint


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _frame(rid: int, field: int, body: bytes) -> bytes:
    """A serialized WorkerUp carrying ``body`` (a serialized request) in ``field``.

    Framed by hand: building a WorkerUp would copy the request (a report of
    megabytes) once more.
    """
    return b"\x08" + _varint(rid) + bytes(((field << 3) | 2,)) + _varint(len(body)) + body


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Stream:
    """One open WorkerSession call: a writer task, a reader task, the requests waiting."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.error: grpc.aio.AioRpcError | None = None
        self._next = 1
        self._pending: dict[int, asyncio.Future[ws.WorkerDown]] = {}
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        # A write or read cancelled midway cancels the whole call (grpc.aio), so
        # both happen in tasks of their own that only close() cancels.
        self._writer = asyncio.ensure_future(self._write_loop())
        self._reader = asyncio.ensure_future(self._read_loop())

    async def request(self, field: int, request: Any, timeout: float | None) -> ws.WorkerDown:
        """Send one request; return its answer.

        Raises:
            grpc.aio.AioRpcError: the request was refused (its status), the
                stream broke, or no answer came within ``timeout`` seconds
                (DEADLINE_EXCEEDED; the stream is closed then).
        """
        if self.error is not None:
            raise self.error
        rid = self._next
        self._next += 1
        answer: asyncio.Future[ws.WorkerDown] = asyncio.get_running_loop().create_future()
        self._pending[rid] = answer
        self._out.put_nowait(_frame(rid, field, request.SerializeToString()))
        try:
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            error = _error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer on the WorkerSession within {timeout:g} s",
            )
            self.close(error)  # it may be stuck: the next request opens a new one
            raise error from None
        except asyncio.CancelledError:
            # (the task's cancellation cancelled ``answer`` too: no answer had come)
            if self.error is None and answer.cancelled():
                self._out.put_nowait(_CANCEL_TAG + _varint(rid))
            raise
        finally:
            del self._pending[rid]

    def close(self, error: grpc.aio.AioRpcError) -> None:
        """Fail every waiting request with ``error`` and cancel the call."""
        if self.error is None:
            self.error = error
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(self.error)
        self._writer.cancel()
        self._reader.cancel()
        self.call.cancel()

    async def _write_loop(self) -> None:
        out, call = self._out, self.call
        try:
            while True:
                frame = await out.get()
                await call.write(frame)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.close(exc)
        except Exception:  # noqa: BLE001 - the call ended: the reader learns its status
            return

    async def _read_loop(self) -> None:
        pending, call = self._pending, self.call
        try:
            while True:
                down = await call.read()
                if down is grpc.aio.EOF:
                    self.close(
                        _error(
                            grpc.StatusCode.UNAVAILABLE, "the coordinator ended the WorkerSession"
                        )
                    )
                    return
                answer = pending.get(down.id)
                if answer is None or answer.done():
                    continue  # abandoned (cancelled or timed out) meanwhile
                if down.WhichOneof("answer") == "error":
                    code = _CODES.get(down.error.code, grpc.StatusCode.UNKNOWN)
                    answer.set_exception(_error(code, down.error.message))
                else:
                    answer.set_result(down)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.close(exc)
        except Exception as exc:  # noqa: BLE001 - a malformed answer: drop the stream
            self.close(_error(grpc.StatusCode.INTERNAL, f"WorkerSession read failed: {exc!r}"))


class SessionStub:
    """Looks like a WorkerServiceStub; the hot-path calls go over a WorkerSession.

    Args:
        connection: The worker's channels; requests follow its current
            address like the unary calls (a stream of an older address is
            closed when the connection moves on).
        enabled: False: every call is unary.
        metadata: Sent when a stream starts (the token: the channel's
            interceptors add it to unary calls only).
    """

    def __init__(
        self,
        connection: CoordinatorConnection,
        *,
        enabled: bool = True,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._connection = connection
        self._metadata = metadata or None
        self._unary = connection.stub
        self._enabled = enabled
        self._stream: _Stream | None = None
        self._stream_generation = -1
        #: The address that answered UNIMPLEMENTED: unary calls there.
        self._unary_only: str | None = None

    def __getattr__(self, method: str) -> Any:
        return getattr(self._unary, method)

    @property
    def on_session(self) -> bool:
        """Whether a WorkerSession stream is open now."""
        return self._stream is not None and self._stream.error is None

    async def RegisterWorker(self, request: Any, **kwargs: Any) -> Any:  # noqa: N802
        """RegisterWorker (unary); afterwards the session is tried again."""
        response = await self._unary.RegisterWorker(request, **kwargs)
        self._unary_only = None
        return response

    async def LeaseTasks(self, request: Any, *, timeout: float | None = None) -> Any:  # noqa: N802
        """LeaseTasks over the session (unary against a coordinator without it)."""
        return await self._call("LeaseTasks", request, timeout)

    async def ReportOutcomes(self, request: Any, *, timeout: float | None = None) -> Any:  # noqa: N802
        """ReportOutcomes over the session (unary against a coordinator without it)."""
        return await self._call("ReportOutcomes", request, timeout)

    async def ReleaseLeases(self, request: Any, *, timeout: float | None = None) -> Any:  # noqa: N802
        """ReleaseLeases over the session (unary against a coordinator without it)."""
        return await self._call("ReleaseLeases", request, timeout)

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        connection = self._connection
        if not self._enabled or self._unary_only == connection.address:
            return await getattr(self._unary, method)(request, timeout=timeout)
        generation = connection.generation
        stream = self._open(generation)
        field, answer = _CALLS[method]
        try:
            down = await stream.request(field, request, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unary_only = connection.address
                log.info("worker_session_unimplemented", coordinator=connection.address,
                         fallback="unary calls")  # fmt: skip
                return await getattr(self._unary, method)(request, timeout=timeout)
            connection.failed(generation, exc)
            raise
        return getattr(down, answer)

    def _open(self, generation: int) -> _Stream:
        """The open stream for the connection's current address; a new one if needed."""
        stream = self._stream
        if stream is not None and stream.error is None and generation == self._stream_generation:
            return stream
        if stream is not None:
            stream.close(_error(grpc.StatusCode.CANCELLED, "WorkerSession replaced"))
        channel = self._connection.current_channel()
        call = channel.stream_stream(
            _PATH, request_serializer=None, response_deserializer=ws.WorkerDown.FromString
        )(metadata=self._metadata)
        self._stream = _Stream(call)
        self._stream_generation = generation
        return self._stream

    async def close(self) -> None:
        """Close the stream, if open (the channels are the connection's to close)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(_error(grpc.StatusCode.CANCELLED, "the worker is stopping"))
            with contextlib.suppress(BaseException):
                await asyncio.gather(stream._writer, stream._reader, return_exceptions=True)
