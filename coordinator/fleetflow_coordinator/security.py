"""The coordinator's TLS and authentication set-up, and the refusal to start exposed.

Safe by default: the coordinator listens on loopback unless told otherwise, and
listening (gRPC or HTTP) on any other address without TLS and authentication
refuses to start unless ``--insecure`` is given, which logs a warning at every
start. What each option does is in docs/architecture.md, "Security".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from fleetflow_coordinator.auth import AuthFile, AuthTable, is_loopback
from fleetflow_coordinator.settings import Settings

__all__ = ["Security", "load_security", "check_exposure"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Security:
    """What a coordinator was told about TLS and credentials, loaded and checked.

    Attributes:
        server_credentials: gRPC server credentials, or None for plaintext.
        auth: The credentials accepted, or None when authentication is off.
        cert_pem: The server certificate chain (PEM), for the HTTPS dashboard.
        key_pem: Its private key (PEM).
        mutual: Client certificates are required (``--tls-client-ca``).
    """

    server_credentials: grpc.ServerCredentials | None = None
    auth: AuthTable | AuthFile | None = None
    cert_pem: bytes = b""
    key_pem: bytes = b""
    mutual: bool = False

    @property
    def tls(self) -> bool:
        """Whether the gRPC port (and the dashboard) speak TLS."""
        return self.server_credentials is not None


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{option} {path}: {exc.strerror or exc}") from None


def load_security(settings: Settings) -> Security:
    """Read the certificate, key, client CA and auth file named in ``settings``.

    Raises:
        ValueError: an option is missing its partner (``--tls-cert`` without
            ``--tls-key``), a file cannot be read, or the auth file is invalid;
            the message names the option and the file.
    """
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    if client_ca and not cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
    credentials = None
    cert_pem = key_pem = b""
    if cert and key:
        cert_pem, key_pem = _read("--tls-cert", cert), _read("--tls-key", key)
        ca_pem = _read("--tls-client-ca", client_ca) if client_ca else None
        for option, pem, marker in (
            ("--tls-cert", cert_pem, b"-----BEGIN CERTIFICATE-----"),
            ("--tls-key", key_pem, b"PRIVATE KEY-----"),
        ):
            if marker not in pem:
                raise ValueError(f"{option} {cert if option == '--tls-cert' else key}: not PEM")
        credentials = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=bool(ca_pem)
        )
    auth = None
    if settings.auth_file:
        auth = AuthFile(settings.auth_file)
    elif client_ca:
        # Mutual TLS without an auth file: the CA alone decides who may connect.
        auth = AuthTable(any_certificate=True)
    return Security(credentials, auth, cert_pem, key_pem, bool(client_ca))


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def check_exposure(settings: Settings, security: Security) -> list[str]:
    """Refuse to serve beyond loopback without TLS and authentication, unless ``insecure``.

    Args:
        settings: The listen and HTTP addresses and ``insecure``.
        security: What :func:`load_security` loaded.

    Returns:
        What is exposed without protection (empty when nothing is); with
        ``insecure`` each is logged as a warning, at every start.

    Raises:
        ValueError: something is exposed and ``insecure`` is not set; the
            message says what and how to fix it.
    """
    problems = []
    host = _host(settings.listen)
    if not is_loopback(host):
        missing = [w for w, ok in (("TLS", security.tls), ("authentication", security.auth))
                   if not ok]  # fmt: skip
        if missing:
            problems.append(
                f"--listen {settings.listen} is beyond loopback without {' and '.join(missing)} "
                "(--tls-cert/--tls-key, --auth-file or --tls-client-ca)"
            )
    http = settings.http.strip()
    if http.lower() not in ("", "off", "none") and not is_loopback(_host(http)):
        tokens = security.auth is not None and bool(security.auth.table.tokens)
        missing = [w for w, ok in (("TLS", security.tls), ("tokens", tokens)) if not ok]
        if missing:
            problems.append(
                f"--http {http} is beyond loopback without {' and '.join(missing)} "
                "(the dashboard and /metrics need a viewer token from --auth-file, over HTTPS)"
            )
    if problems and not settings.insecure:
        raise ValueError(
            "refusing to start: "
            + "; ".join(problems)
            + ". Secure it (`fleetflow certs`, `fleetflow token`; see the README's "
            "'A fleet on several machines'), listen on 127.0.0.1, or pass --insecure."
        )
    if settings.insecure:
        log.warning(
            "insecure",
            exposed=problems or ["nothing beyond loopback"],
            note="--insecure: anyone who can reach these ports may run code on the workers",
        )
    return problems
