"""The one server interceptor in front of every fleetflow RPC.

For each call to ``CoordinatorService``, ``WorkerService`` or ``TransferService`` it,
in order:

0. authenticates the caller and checks its role against the method-to-role
   table (:mod:`fleetflow_coordinator.auth`) when authentication is on; a
   refused call is never decoded and never reaches its handler;
1. refuses a request larger than its method's limit (RESOURCE_EXHAUSTED);
2. decodes the request bytes itself, so malformed bytes are refused with
   INVALID_ARGUMENT (gRPC's own decoding would answer UNKNOWN);
3. checks the request against the bounds table, clamping what the rule
   clamps (:func:`fleetflow_coordinator.bounds.check_request`);
4. runs the handler and turns whatever it raises into a status through the
   one error table (:mod:`fleetflow_coordinator.errors`): a refusal gets its
   code and message, anything else is a bug and gets INTERNAL, with its
   traceback logged once, here.

Handlers therefore never call ``context.abort`` themselves.

The standard health service is apart (:class:`HealthGate`): ``Check`` needs
no credential, so probes need none, but ``Watch`` does when authentication is
on. A Watch stream never ends, so the connection under it never goes idle: an
unauthenticated one would let anyone who can reach the port pin connections
past the idle close until the process runs out of file descriptors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from fleetflow_coordinator.auth import ANONYMOUS, AuthFile, AuthTable, Principal, set_principal
from fleetflow_coordinator.bounds import check_request, request_bytes_limit
from fleetflow_coordinator.errors import (
    LimitExceeded,
    PermissionDenied,
    Unauthenticated,
    status_for,
)

__all__ = ["EdgeInterceptor", "HealthGate", "HEALTH_WATCH", "SERVICES", "MAX_STATUS_MESSAGE"]

log = structlog.get_logger(__name__)

#: The services whose methods pass through the interceptor.
SERVICES = (
    "fleetflow.api.v1.CoordinatorService",
    "fleetflow.api.v1.WorkerService",
    "fleetflow.api.v1.TransferService",
)

#: The standard health service's streaming method: it needs a credential
#: (any role) when authentication is on; ``Check`` needs none.
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"

#: Status messages are cut to this many characters: they travel in trailing
#: metadata, which peers cap (8 KiB by default in gRPC clients).
MAX_STATUS_MESSAGE = 1024


def _service_of(method: str) -> str:
    return method.rpartition("/")[0].lstrip("/")


def _checked_decoder(
    method: str, deserializer: Callable[[bytes], Any] | None
) -> Callable[[bytes], Any]:
    """Size check, decode and bounds check of one method's requests, as one function."""
    limit = request_bytes_limit(method)

    def decode(raw: bytes) -> Any:
        if len(raw) > limit:
            raise LimitExceeded(
                f"request: {len(raw)} bytes, over the limit of {limit} bytes for "
                f"{method.rpartition('/')[2]} (request_bytes)"
            )
        request = deserializer(raw) if deserializer is not None else raw
        check_request(request)
        return request

    return decode


def _bytes_through(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """``serialize``, except that bytes (an answer its handler serialized) pass as they are."""

    def serializer(message: Any) -> bytes:
        if isinstance(message, bytes) or serialize is None:
            return message
        return serialize(message)

    return serializer


class HealthGate(grpc.aio.ServerInterceptor):
    """Let health ``Check`` through to anyone, ``Watch`` only to a known credential.

    With authentication off every call passes (as every other RPC does).

    Args:
        auth: The credentials accepted; None turns authentication off.
        on_refused: Called with ``(status code name, method)`` for every
            refused Watch (a metric), optional.
    """

    def __init__(
        self,
        auth: AuthTable | AuthFile | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.auth = auth
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap health Watch in the credential check; pass anything else through."""
        handler = await continuation(handler_call_details)
        return self.gate(handler_call_details.method, handler)

    def gate(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        """``handler``, wrapped in the credential check when it is health Watch."""
        if (
            method != HEALTH_WATCH
            or self.auth is None
            or handler is None
            or handler.unary_stream is None
        ):
            return handler
        behavior = handler.unary_stream

        async def watch(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self.auth.table.authenticate(context.invocation_metadata(), context.auth_context())
            except Unauthenticated as exc:
                if self.on_refused is not None:
                    self.on_refused("UNAUTHENTICATED", method)
                log.info("rpc_credential_refused", method=method, code="UNAUTHENTICATED",
                         peer=context.peer(), reason=str(exc))  # fmt: skip
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"health Watch needs a credential (Check needs none): {exc}",
                )
            return await behavior(request, context)

        return grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate, decode, check, run and map errors for every fleetflow RPC.

    Args:
        auth: The credentials accepted; None turns authentication off (every
            caller is :data:`~fleetflow_coordinator.auth.ANONYMOUS`).
        on_refused: Called with ``(status code name, method)`` for every call
            refused for its credential (a metric), optional.
    """

    def __init__(
        self,
        auth: AuthTable | AuthFile | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.auth = auth
        self.on_refused = on_refused
        self.health = HealthGate(auth, on_refused)
        #: {method: (its handler, the wrapped handler)}
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        """The caller, once authenticated and authorised for ``method``."""
        if self.auth is None:
            return ANONYMOUS
        table = self.auth.table  # an auth file is read again when it changes
        try:
            principal = table.authenticate(context.invocation_metadata(), context.auth_context())
            table.authorize(principal, method)
        except (Unauthenticated, PermissionDenied) as exc:
            code = "UNAUTHENTICATED" if isinstance(exc, Unauthenticated) else "PERMISSION_DENIED"
            if self.on_refused is not None:
                self.on_refused(code, method)
            log.info("rpc_credential_refused", method=method, code=code, peer=context.peer(),
                     reason=str(exc))  # fmt: skip
            raise
        return principal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler of a fleetflow method; pass any other through unchanged."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _service_of(method) not in SERVICES:
            return self.health.gate(method, handler)
        # A method's handler never changes: wrap it once, not on every call
        # (a one-task flow's round trip makes four calls).
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, self._wrap(method, handler))
        return wrapped[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` behind the admission, decoding, bounds and error table."""
        decode = _checked_decoder(method, handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, decode),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream, decode),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:  # TransferService.WriteObject
            return grpc.stream_unary_rpc_method_handler(
                self._stream_in(method, handler.stream_unary, decode),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # WorkerService.WorkerSession
            return grpc.stream_stream_rpc_method_handler(
                self._stream_in(method, handler.stream_stream, decode),
                request_deserializer=None,
                response_serializer=_bytes_through(handler.response_serializer),
            )
        return handler

    def _unary(
        self,
        method: str,
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        decode: Callable[[bytes], Any],
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def serve(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                set_principal(self._admit(method, context))
                request = decode(raw)
                return await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # every error goes through the table
                await self._refuse(method, exc, context)

        return serve

    def _stream(
        self,
        method: str,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
        decode: Callable[[bytes], Any],
    ) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def serve(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                set_principal(self._admit(method, context))
                request = decode(raw)
                async for response in behavior(request, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # every error goes through the table
                await self._refuse(method, exc, context)

        return serve

    def _stream_in(
        self,
        method: str,
        behavior: Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[Any]],
        decode: Callable[[bytes], Any],
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[Any]]:
        """A client or bidirectional stream: admitted at its start (and again later).

        It is admitted again at its next message once the credentials in force
        changed, so a token revoked in the auth file ends it. Every message is
        size-checked, decoded and bounds-checked as it comes; a bidirectional
        handler writes its answers with ``context.write``.
        """

        async def serve(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            try:
                set_principal(self._admit(method, context))
                admitted = self.auth.table if self.auth is not None else None

                async def requests() -> AsyncIterator[Any]:
                    nonlocal admitted
                    async for message in raw:
                        # The credentials changed (an auth file edited to rotate or
                        # revoke a token): a long-lived stream's caller is checked
                        # again, as its next unary call would be.
                        if self.auth is not None and self.auth.table is not admitted:
                            admitted = self.auth.table
                            set_principal(self._admit(method, context))
                        yield decode(message)

                return await behavior(requests(), context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # every error goes through the table
                await self._refuse(method, exc, context)

        return serve

    @staticmethod
    async def _refuse(method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        """Abort the call with the table's status for ``exc`` (INTERNAL for a bug)."""
        status = status_for(exc)
        if status is None:
            log.error("rpc_internal_error", method=method, exc_info=exc)
            code = grpc.StatusCode.INTERNAL
            message = f"internal error in the coordinator ({type(exc).__name__}); it is logged"
        else:
            code, message = status
            log.debug("rpc_refused", method=method, code=code.name, message=message[:200])
        if len(message) > MAX_STATUS_MESSAGE:
            message = message[: MAX_STATUS_MESSAGE - 3] + "..."
        await context.abort(code, message)
