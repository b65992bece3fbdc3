"""Who may call what: roles, the method-to-role table, the auth file, and credentials.

A peer proves who it is with a **bearer token** (gRPC metadata
``authorization: Bearer <token>``, sent over TLS) or a **client certificate**
(mutual TLS: its common name). The auth file (``--auth-file``, TOML, written by
``fleetflow token`` and ``fleetflow certs``) gives each credential a name and
roles; tokens are stored as SHA-256 hashes only, never logged, and any number
may be valid at once (rotation: add the new one, move peers over, remove the old).

The edge interceptor authenticates and authorises every call from
:data:`METHOD_ROLES` before the request is even decoded: no handler runs for a
call that is refused. Unknown or missing credential: UNAUTHENTICATED; a known one
without a role the method needs: PERMISSION_DENIED.

Tokens are 256-bit random strings (:func:`new_token`), so one SHA-256 is enough
to store them (no slow password hash is needed for secrets nobody chose), and
looking a digest up in a dict leaks nothing useful about the token.
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import os
import secrets
import socket
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from fleetflow_coordinator.errors import PermissionDenied, Unauthenticated

__all__ = [
    "ROLES",
    "METHOD_ROLES",
    "HTTP_ROLES",
    "ANONYMOUS",
    "AuthFile",
    "AuthTable",
    "Principal",
    "current_principal",
    "hash_token",
    "new_token",
    "append_entry",
    "is_loopback",
]

log = structlog.get_logger(__name__)

#: Every role a credential may hold.
ROLES = ("client", "worker", "viewer", "admin")

_C = "/fleetflow.api.v1.CoordinatorService/"
_W = "/fleetflow.api.v1.WorkerService/"
_T = "/fleetflow.api.v1.TransferService/"
_READ = frozenset({"viewer", "client", "admin"})
_CLIENT = frozenset({"client", "admin"})
_ADMIN = frozenset({"admin"})
_WORKER = frozenset({"worker", "admin"})
#: Payload bytes (the result store): those who submit flow runs and those who run them.
_DATA = frozenset({"client", "worker", "admin"})

#: ``{method: roles allowed to call it}`` for every RPC of the three services.
#: ``client`` submits, reads, watches and cancels; ``viewer`` only reads;
#: ``worker`` runs task runs; ``admin`` may do everything (prune, limits).
METHOD_ROLES: dict[str, frozenset[str]] = {
    _C + "SubmitFlowRun": _CLIENT,
    _C + "GetFlowRun": _READ,
    _C + "ListFlowRuns": _READ,
    _C + "WatchFlowRun": _READ,
    _C + "GetTaskRun": _READ,
    _C + "ListWorkers": _READ,
    _C + "GetDemand": _READ,
    _C + "GetFlowRunStats": _READ,
    _C + "ListTaskRuns": _READ,
    _C + "ListConcurrencyLimits": _READ,
    _C + "CancelFlowRun": _CLIENT,
    _C + "CancelTaskRun": _CLIENT,
    _C + "PruneFlowRuns": _ADMIN,
    _C + "SetConcurrencyLimit": _ADMIN,
    _W + "RegisterWorker": _WORKER,
    _W + "Heartbeat": _WORKER,
    _W + "LeaseTasks": _WORKER,
    _W + "ReportOutcomes": _WORKER,
    _W + "ReleaseLeases": _WORKER,
    # admitted once, when the stream starts; each message is then checked as
    # its unary call (worker id ownership included)
    _W + "WorkerSession": _WORKER,
    _T + "GetStoreInfo": _DATA,
    _T + "WriteObject": _DATA,
    _T + "ReadObject": _DATA,
    _T + "ReadNodeValues": _DATA,
}

#: Roles that may read the dashboard and ``/metrics`` when a token is needed.
HTTP_ROLES = _READ


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        name: The credential's name in the auth file (a certificate: its CN).
        roles: What it may do (see :data:`METHOD_ROLES`).
        via: ``"token"``, ``"certificate"`` or ``"none"`` (authentication off).
    """

    name: str
    roles: frozenset[str]
    via: str

    def may(self, roles: frozenset[str]) -> bool:
        """Whether this caller holds any of ``roles``."""
        return not self.roles.isdisjoint(roles)


#: The caller when authentication is off (loopback, or ``--insecure``): every role.
ANONYMOUS = Principal("anonymous", frozenset(ROLES), "none")

_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "fleetflow_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the edge interceptor)."""
    return _CURRENT.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    """Make ``principal`` the caller of the RPC being served (the interceptor's job)."""
    return _CURRENT.set(principal)


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:`` and the hex digest of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A new random token: ``ff_`` and 256 random bits, URL-safe base64."""
    return "ff_" + secrets.token_urlsafe(32)


def _roles(where: str, raw: Any) -> frozenset[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}.roles: a non-empty list of {', '.join(ROLES)}")
    bad = [r for r in raw if r not in ROLES]
    if bad:
        raise ValueError(f"{where}.roles: unknown role {bad[0]!r} (one of {', '.join(ROLES)})")
    return frozenset(raw)


class AuthTable:
    """The credentials a coordinator accepts, loaded from its auth file.

    Args:
        tokens: ``{stored hash: Principal}``.
        certificates: ``{common name: Principal}``.
        any_certificate: Give every verified client certificate all roles
            (mutual TLS without an auth file: the CA alone decides).
    """

    def __init__(
        self,
        tokens: Mapping[str, Principal] | None = None,
        certificates: Mapping[str, Principal] | None = None,
        *,
        any_certificate: bool = False,
    ) -> None:
        self.tokens = dict(tokens or {})
        self.certificates = dict(certificates or {})
        self.any_certificate = any_certificate

    @property
    def table(self) -> AuthTable:
        """This table (the same interface as :class:`AuthFile`)."""
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuthTable:
        """Read an auth file.

        The file is TOML with ``[[token]]`` tables (``name``, ``roles``,
        ``sha256``) and ``[[certificate]]`` tables (``common_name``, ``roles``).

        Raises:
            ValueError: the file cannot be read or breaks a rule; the message
                names the file and the entry.
        """
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"auth file {path}: {exc}") from None
        unknown = set(data) - {"token", "certificate"}
        if unknown:
            raise ValueError(f"auth file {path}: unknown table {sorted(unknown)[0]!r}")
        tokens: dict[str, Principal] = {}
        for i, entry in enumerate(data.get("token", [])):
            where = f"auth file {path}: token[{i}]"
            name, digest = entry.get("name"), entry.get("sha256")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}.name: a non-empty string")
            if not isinstance(digest, str) or not digest.startswith("sha256:"):
                raise ValueError(f"{where} ({name}).sha256: 'sha256:<hex>' from `fleetflow token`")
            if len(digest) != 71 or any(c not in "0123456789abcdef" for c in digest[7:]):
                raise ValueError(f"{where} ({name}).sha256: not a SHA-256 hex digest")
            tokens[digest] = Principal(name, _roles(where, entry.get("roles")), "token")
        certificates: dict[str, Principal] = {}
        for i, entry in enumerate(data.get("certificate", [])):
            where = f"auth file {path}: certificate[{i}]"
            name = entry.get("common_name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}.common_name: a non-empty string")
            certificates[name] = Principal(name, _roles(where, entry.get("roles")), "certificate")
        return cls(tokens, certificates)

    def authenticate(
        self, metadata: Sequence[tuple[str, Any]] | None, auth_context: Mapping[str, Any]
    ) -> Principal:
        """Find the caller of one RPC.

        A bearer token, when one is sent, decides; otherwise the verified client
        certificate's common name.

        Args:
            metadata: The call's invocation metadata.
            auth_context: gRPC's auth context of the call (``x509_common_name``
                is set for a verified client certificate).

        Raises:
            Unauthenticated: no credential, or one this table does not know.
        """
        for key, value in metadata or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer" or not token:
                    raise Unauthenticated("authorization metadata: expected 'Bearer <token>'")
                principal = self.tokens.get(hash_token(token.strip()))
                if principal is None:
                    raise Unauthenticated("unknown token (not in the coordinator's auth file)")
                return principal
        names = auth_context.get("x509_common_name") or ()
        if names:
            name = names[0].decode(errors="replace")
            principal = self.certificates.get(name)
            if principal is not None:
                return principal
            if self.any_certificate:
                return Principal(name, frozenset(ROLES), "certificate")
            raise Unauthenticated(
                f"client certificate CN={name[:64]!r} is not in the coordinator's auth file"
            )
        raise Unauthenticated(
            "no credential: send a token (--token-file or FLEETFLOW_TOKEN) over TLS, "
            "or a client certificate (--tls-cert/--tls-key)"
        )

    def authorize(self, principal: Principal, method: str) -> None:
        """Check that ``principal`` may call ``method``.

        Raises:
            PermissionDenied: it holds none of the roles the method needs.
        """
        allowed = METHOD_ROLES.get(method, _ADMIN)
        if not principal.may(allowed):
            raise PermissionDenied(
                f"{principal.name} (roles: {', '.join(sorted(principal.roles))}) may not call "
                f"{method.rpartition('/')[2]}; it needs one of: {', '.join(sorted(allowed))}"
            )

    def http_principal(self, authorization: str | None) -> Principal:
        """Find the caller of an HTTP request from its ``Authorization`` header.

        ``Bearer <token>`` (Prometheus ``bearer_token``) and ``Basic`` with the
        token as password (what a browser prompts for) are both accepted.

        Raises:
            Unauthenticated: no token, or one this table does not know.
        """
        import base64
        import binascii

        scheme, _, value = (authorization or "").partition(" ")
        token = ""
        if scheme.lower() == "bearer":
            token = value.strip()
        elif scheme.lower() == "basic":
            try:
                token = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                token = ""
        principal = self.tokens.get(hash_token(token)) if token else None
        if principal is None:
            raise Unauthenticated("a viewer token is needed (Bearer, or Basic with it as password)")
        return principal


class AuthFile:
    """An auth file that is read again when it changes (checked at most once a second).

    So tokens are added, rotated and revoked by editing the file (``fleetflow
    token`` appends), without restarting the coordinator. A file that no
    longer parses is logged and the last good table stays in force.

    Args:
        path: The auth file.
        clock: Monotonic seconds; injectable for tests.

    Raises:
        ValueError: (on construction) the file cannot be read or parsed.
    """

    def __init__(self, path: str | os.PathLike[str], clock: Any = None) -> None:
        self.path = Path(path)
        self._clock = clock or time.monotonic
        self._mtime = self._stat()
        self._table = AuthTable.load(self.path)
        self._checked = self._clock()

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    @property
    def table(self) -> AuthTable:
        """The credentials in force now."""
        now = self._clock()
        if now - self._checked >= 1.0:
            self._checked = now
            mtime = self._stat()
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._table = AuthTable.load(self.path)
                except ValueError as exc:
                    log.warning(
                        "auth_file_unreadable", path=str(self.path), error=str(exc),
                        note="the previous credentials stay in force",
                    )  # fmt: skip
                else:
                    log.info(
                        "auth_file_reloaded", path=str(self.path),
                        tokens=len(self._table.tokens),
                        certificates=len(self._table.certificates),
                    )  # fmt: skip
        return self._table


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 32 for c in escaped):
        raise ValueError(f"{value!r}: control characters are not allowed in a name")
    return f'"{escaped}"'


def append_entry(
    path: str | os.PathLike[str],
    *,
    roles: Iterable[str],
    token: str | None = None,
    common_name: str | None = None,
    name: str | None = None,
) -> None:
    """Add a token's hash or a certificate's common name to an auth file (created 0600).

    Args:
        path: The auth file.
        roles: Roles of the new entry.
        token: The token to add (only its hash is written); with ``name``.
        common_name: A client certificate's CN to add, instead of a token.
        name: The token's name (who holds it), required with ``token``.

    Raises:
        ValueError: a role is unknown, or neither/both of token and common_name.
    """
    roles = list(roles)
    _roles("entry", roles)
    if (token is None) == (common_name is None):
        raise ValueError("give a token (with its name) or a certificate common name")
    if token is not None:
        if not name:
            raise ValueError("a token needs a name")
        lines = ["[[token]]", f"name = {_toml_string(name)}", f'sha256 = "{hash_token(token)}"']
    else:
        lines = ["[[certificate]]", f"common_name = {_toml_string(common_name or '')}"]
    lines.append("roles = [" + ", ".join(_toml_string(r) for r in roles) + "]")
    target = Path(path)
    header = "" if target.exists() else (
        "# fleetflow coordinator credentials (--auth-file): token hashes and client\n"
        "# certificate names, with their roles. Written by `fleetflow token` and\n"
        "# `fleetflow certs`; tokens themselves are never stored here.\n"
    )  # fmt: skip
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(header + "\n" + "\n".join(lines) + "\n")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is loopback only.

    A name counts as loopback when every address it resolves to is; ``""``,
    ``0.0.0.0`` and ``::`` (every interface) are not.
    """
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses
    )
