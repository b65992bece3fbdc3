"""Certificates, tokens and a TLS + token coordinator for the security tests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from fleetflow.credentials import Credentials
from fleetflow_coordinator.auth import ROLES, append_entry, new_token
from fleetflow_coordinator.pki import Authority
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.server import create_server
from fleetflow_coordinator.settings import Settings
from fleetflow_coordinator.store import MemoryStore


@dataclass
class Pki:
    """A CA, a coordinator certificate, one token and one client certificate per role."""

    directory: Path
    ca: Path
    cert: Path
    key: Path
    auth_file: Path
    #: {name: token}: one per role under the role's name, plus "worker2" and "stranger"
    tokens: dict[str, str] = field(default_factory=dict)
    #: {role: (cert, key)} client certificates whose CN is the role's name
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def credentials(self, who: str | None = None, *, cert: str | None = None) -> Credentials:
        """TLS to the coordinator, with ``who``'s token and/or ``cert``'s certificate."""
        tls_cert, tls_key = self.certs[cert] if cert else (None, None)
        return Credentials(
            tls_ca=str(self.ca),
            token=self.tokens[who] if who else None,
            tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None,
        )


def make_pki(directory: Path) -> Pki:
    authority = Authority(directory / "pki")
    cert, key = authority.issue("coordinator", "coordinator", server=True)
    auth_file = directory / "pki" / "auth.toml"
    pki = Pki(directory / "pki", authority.ca_path, cert, key, auth_file)
    for name, role in [*((r, r) for r in ROLES), ("worker2", "worker")]:
        token = new_token()
        append_entry(auth_file, roles=[role], token=token, name=name)
        pki.tokens[name] = token
    pki.tokens["stranger"] = new_token()  # not in the auth file
    for role in ROLES:
        pki.certs[role] = authority.issue(f"{role}-cert", f"{role}-cert")
        append_entry(auth_file, roles=[role], common_name=f"{role}-cert")
    return pki


@contextlib.asynccontextmanager
async def secure_coordinator(pki: Pki, *, mutual: bool = False, auth: bool = True, **settings):
    """An in-process coordinator speaking TLS with token (and optionally mTLS) auth."""
    settings.setdefault("db", ":memory:")
    settings.setdefault("http", "off")
    rt = Runtime(
        Settings(
            tls_cert=str(pki.cert),
            tls_key=str(pki.key),
            tls_client_ca=str(pki.ca) if mutual else None,
            auth_file=str(pki.auth_file) if auth else None,
            **settings,
        ),
        MemoryStore(),
    )
    await rt.open()
    server, port = await create_server("127.0.0.1:0", rt)
    rt.start()
    try:
        yield rt, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=0.5)
        await rt.stop()
