"""How clients and workers prove who they are and check whom they talk to.

One :class:`Credentials` object holds the TLS and token settings of a process,
and :meth:`Credentials.aio_channel` / :meth:`Credentials.channel` are the one
place gRPC channels to a coordinator are created (by ``Client``, ``AsyncClient``,
the CLI and the worker):

* with ``tls_ca`` (or ``tls=True`` for the system's roots) the channel speaks
  TLS and verifies the coordinator's certificate against that bundle;
* with ``tls_cert`` and ``tls_key`` it presents a client certificate (mutual TLS);
* with a ``token`` every call carries ``authorization: Bearer <token>``. A token
  is sent only over TLS, or in plaintext to a loopback address; anything else is
  refused before a connection is made, so a token never crosses a network in
  the clear.

Options given on the command line win over the environment:
``FLEETFLOW_TLS_CA``, ``FLEETFLOW_TLS_CLIENT_CERT``, ``FLEETFLOW_TLS_CLIENT_KEY``,
``FLEETFLOW_TOKEN_FILE`` and ``FLEETFLOW_TOKEN`` (``CLIENT_`` keeps them apart from
the coordinator's own ``FLEETFLOW_TLS_CERT``/``FLEETFLOW_TLS_KEY`` settings).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fleetflow.errors import FleetflowError

__all__ = ["Credentials", "CredentialsError"]


class CredentialsError(FleetflowError, ValueError):
    """A credential option is unusable; the message names the option and the file."""


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{option} {path}: {exc.strerror or exc}") from None


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
        """Build credentials from command-line options, then ``FLEETFLOW_*`` variables.

        Raises:
            CredentialsError: a file cannot be read or options do not go together.
        """
        env = os.environ if environ is None else environ
        tls_ca = tls_ca or env.get("FLEETFLOW_TLS_CA") or None
        tls_cert = tls_cert or env.get("FLEETFLOW_TLS_CLIENT_CERT") or None
        tls_key = tls_key or env.get("FLEETFLOW_TLS_CLIENT_KEY") or None
        token_file = token_file or env.get("FLEETFLOW_TOKEN_FILE") or None
        token = None
        if token_file:
            token = _read("--token-file", token_file).decode(errors="replace").strip()
            if not token:
                raise CredentialsError(f"--token-file {token_file}: the file is empty")
        elif env.get("FLEETFLOW_TOKEN"):
            token = env["FLEETFLOW_TOKEN"].strip()
        return cls(tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)

    @property
    def uses_tls(self) -> bool:
        """Whether channels speak TLS."""
        return bool(self.tls or self.tls_ca or self.tls_cert)

    def options(self) -> list[tuple[str, Any]]:
        """Channel options these credentials need (the certificate name override)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def channel_credentials(self, address: str) -> grpc.ChannelCredentials | None:
        """The channel credentials for ``address``; None for a plain channel.

        Raises:
            CredentialsError: a file cannot be read, or a token would travel
                in plaintext beyond loopback.
        """
        call = grpc.access_token_call_credentials(self.token) if self.token else None
        if self.uses_tls:
            channel = grpc.ssl_channel_credentials(
                root_certificates=_read("--tls-ca", self.tls_ca) if self.tls_ca else None,
                private_key=_read("--tls-key", self.tls_key) if self.tls_key else None,
                certificate_chain=_read("--tls-cert", self.tls_cert) if self.tls_cert else None,
            )
            return grpc.composite_channel_credentials(channel, call) if call else channel
        if call is None:
            return None
        if not _loopback(address):
            raise CredentialsError(
                f"a token is sent only over TLS, and {address} is not loopback: "
                "give the coordinator's CA bundle with --tls-ca (or FLEETFLOW_TLS_CA)"
            )
        local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        return grpc.composite_channel_credentials(local, call)

    def aio_channel(
        self, address: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``address`` with these credentials.

        Raises:
            CredentialsError: see :meth:`channel_credentials`.
        """
        creds = self.channel_credentials(address)
        opts = [*options, *self.options()]
        if creds is None:
            return grpc.aio.insecure_channel(address, options=opts)
        return grpc.aio.secure_channel(address, creds, options=opts)

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to ``address`` with these credentials.

        Raises:
            CredentialsError: see :meth:`channel_credentials`.
        """
        creds = self.channel_credentials(address)
        opts = [*options, *self.options()]
        if creds is None:
            return grpc.insecure_channel(address, options=opts)
        return grpc.secure_channel(address, creds, options=opts)
