"""How clients and workers prove who they are and check whom they talk to.

One :class:`Credentials` object holds the TLS and token settings of a process,
and :meth:`Credentials.aio_channel` / :meth:`Credentials.channel` are the one
place gRPC channels to a coordinator are created (by ``Client``, ``AsyncClient``,
the CLI and the worker):

* with ``tls_ca`` (or ``tls=True`` for the system's roots) the channel speaks
  TLS and verifies the coordinator's certificate against that bundle;
* with ``tls_cert`` and ``tls_key`` it presents a client certificate (mutual TLS);
* with a ``token`` every call carries ``authorization: Bearer <token>`` (added
  by a client interceptor). A token is sent only over TLS, or in plaintext to a
  loopback address; anything else is refused before a connection is made, so a
  token never crosses a network in the clear.

Options given on the command line win over the environment:
``FLEETFLOW_TLS_CA``, ``FLEETFLOW_TLS_CLIENT_CERT``, ``FLEETFLOW_TLS_CLIENT_KEY``,
``FLEETFLOW_TOKEN_FILE`` and ``FLEETFLOW_TOKEN`` (``CLIENT_`` keeps them apart from
the coordinator's own ``FLEETFLOW_TLS_CERT``/``FLEETFLOW_TLS_KEY`` settings).
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fleetflow.errors import FleetflowError

__all__ = ["Credentials", "CredentialsError", "read_token_file"]


class CredentialsError(FleetflowError, ValueError):
    """A credential option is unusable; the message names the option and the file."""


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{option} {path}: {exc.strerror or exc}") from None


def read_token_file(path: str) -> str:
    """The token in a ``--token-file`` (surrounding white space removed).

    Raises:
        CredentialsError: the file cannot be read or is empty.
    """
    token = _read("--token-file", path).decode(errors="replace").strip()
    if not token:
        raise CredentialsError(f"--token-file {path}: the file is empty")
    return token


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """TLS and token settings for channels to a coordinator.

    Attributes:
        tls_ca: PEM CA bundle the coordinator's certificate must chain to; turns TLS on.
        tls: TLS with the system's trusted roots (when the coordinator has a
            certificate from a public CA); implied by ``tls_ca``.
        tls_cert: PEM client certificate, for mutual TLS (with ``tls_key``).
        tls_key: PEM private key of ``tls_cert``.
        token: Bearer token (``fleetflow token``); never shown in ``repr``.
        server_name: The name to verify in the coordinator's certificate when
            the address uses another (e.g. an IP not in the certificate).
    """

    tls_ca: str | None = None
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise CredentialsError("--tls-cert and --tls-key go together")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise CredentialsError("the token is empty or contains white space")

    @classmethod
    def from_options(
        cls,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Build credentials from options, then ``FLEETFLOW_*`` variables, then the file.

        The file is the ``[client]`` section of the configuration file
        (:mod:`fleetflow.config`): ``tls_ca``, ``tls_client_cert``,
        ``tls_client_key``, ``token_file``, ``token``.

        Raises:
            CredentialsError: a file cannot be read or options do not go together.
        """
        from fleetflow.settings import ClientSettings, SettingsError

        flags = {
            "tls_ca": tls_ca,
            "tls_client_cert": tls_cert,
            "tls_client_key": tls_key,
            "token_file": token_file,
        }
        try:
            # One schema: the options, then FLEETFLOW_* variables, then the [client]
            # section of the configuration file.
            settings = ClientSettings.load(flags, environ=environ).settings
        except SettingsError as exc:
            raise CredentialsError(str(exc)) from None
        return settings.build_credentials()

    @property
    def uses_tls(self) -> bool:
        """Whether channels speak TLS."""
        return bool(self.tls or self.tls_ca or self.tls_cert)

    def options(self) -> list[tuple[str, Any]]:
        """Channel options these credentials need (the certificate name override)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def channel_credentials(
        self, address: str, *, with_token: bool = True
    ) -> grpc.ChannelCredentials | None:
        """The channel credentials for ``address``; None for a plain channel without token.

        Args:
            address: ``HOST:PORT`` the channel will dial (a token goes in
                plaintext only to loopback).
            with_token: Include the token as gRPC call credentials. That plugin
                costs a thread hop on every call; :meth:`aio_channel` and
                :meth:`channel` pass ``False`` and add the token with
                :meth:`aio_interceptors` / :meth:`interceptor` instead, which
                is as cheap as no token (benchmarks/RESULTS.md).

        Raises:
            CredentialsError: a file cannot be read, or a token would travel
                in plaintext beyond loopback.
        """
        token = self.token if with_token else None
        call = grpc.access_token_call_credentials(token) if token else None
        if self.uses_tls:
            channel = grpc.ssl_channel_credentials(
                root_certificates=_read("--tls-ca", self.tls_ca) if self.tls_ca else None,
                private_key=_read("--tls-key", self.tls_key) if self.tls_key else None,
                certificate_chain=_read("--tls-cert", self.tls_cert) if self.tls_cert else None,
            )
            return grpc.composite_channel_credentials(channel, call) if call else channel
        if self.token and not _loopback(address):
            raise CredentialsError(
                f"a token is sent only over TLS, and {address} is not loopback: "
                "give the coordinator's CA bundle with --tls-ca (or FLEETFLOW_TLS_CA)"
            )
        if call is None:
            return None
        local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        return grpc.composite_channel_credentials(local, call)

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata that carries the token, for a call made with ``metadata=`` ((): none).

        The asyncio channel's interceptors add the token to unary calls and
        server streams only; a bidirectional stream (the worker's session) sends
        it this way, since an intercepted stream's writes take an extra task hop
        each in ``grpc.aio``.
        """
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def aio_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """Interceptors that add the token to every call of an asyncio channel ([] without)."""
        return _aio_token_interceptors(self.token) if self.token else []

    def interceptor(self) -> grpc.UnaryUnaryClientInterceptor | None:
        """An interceptor that adds the token to every call of a blocking channel, or None."""
        return _TokenInterceptor(self.token) if self.token else None

    def aio_channel(
        self, address: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``address`` with these credentials.

        Raises:
            CredentialsError: see :meth:`channel_credentials`.
        """
        creds = self.channel_credentials(address, with_token=False)
        opts = [*options, *self.options()]
        interceptors = self.aio_interceptors() or None
        if creds is None:
            return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
        return grpc.aio.secure_channel(address, creds, options=opts, interceptors=interceptors)

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to ``address`` with these credentials.

        Raises:
            CredentialsError: see :meth:`channel_credentials`.
        """
        creds = self.channel_credentials(address, with_token=False)
        opts = [*options, *self.options()]
        if creds is None:
            channel = grpc.insecure_channel(address, options=opts)
        else:
            channel = grpc.secure_channel(address, creds, options=opts)
        return (
            grpc.intercept_channel(channel, _TokenInterceptor(self.token))
            if self.token
            else channel
        )


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """A call's details with the token added to its metadata."""


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            d.method,
            d.timeout,
            (*(d.metadata or ()), self._header),
            d.credentials,
            d.wait_for_ready,
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Add the token."""
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Add the token."""
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        """Add the token."""
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        """Add the token."""
        return continuation(self._details(details), requests)


def _aio_details(header: tuple[str, str], d: Any) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(d.metadata or ()), header)
    return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                      d.wait_for_ready)  # fmt: skip


class _AioUnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Add the token."""
        return await continuation(_aio_details(self._header, details), request)


class _AioUnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Add the token."""
        return await continuation(_aio_details(self._header, details), request)


def _aio_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <token>`` to every asyncio call."""
    header = ("authorization", f"Bearer {token}")
    return [_AioUnaryUnaryToken(header), _AioUnaryStreamToken(header)]
