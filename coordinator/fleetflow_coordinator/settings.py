"""Coordinator settings: one frozen dataclass, defaults in one place, env overrides."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["Settings"]

_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False, "": False}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the coordinator process can be told.

    Each field can be overridden by an environment variable named
    ``FLEETFLOW_<FIELD>`` in upper case (``FLEETFLOW_LEASE_TTL_S=5``).

    Attributes:
        listen: ``HOST:PORT`` to bind; port 0 picks a free port.
        port_file: If set, the bound port is written there once serving.
        lease_ttl_s: Seconds a worker may stay silent before its leases expire.
        heartbeat_interval_s: Seconds between worker heartbeats (told to workers).
        tick_interval_s: Seconds between timer checks (retries, expiry).
        max_infra_failures: Attempts per task run that may end through the
            infrastructure (worker lost) before the task run fails.
        lease_wait_max_s: Upper bound on a worker's long poll, seconds.
        db: SQLite database path, ``":memory:"`` for a throwaway run, or a
            ``postgresql://USER@HOST:PORT/DBNAME`` URL (hot standby: several
            coordinators may share one PostgreSQL database, one is active).
        synchronous: ``"NORMAL"`` (survives a crash of the coordinator process)
            or ``"FULL"`` (also survives power loss, or with PostgreSQL a crash
            of the database server): SQLite's ``synchronous`` pragma,
            PostgreSQL's ``synchronous_commit`` ``off`` / ``on``.
        commit_interval_s: Extra group-commit window, seconds (default 0). With
            0, a commit starts as soon as there is something to store, and every
            change made while one commit is being written joins the next one, so
            batches grow with load without adding latency when idle.
        commit_max_changes: A batch this large (rows) is stored without waiting.
        inline_commit_rows: Batches up to this many rows are written on the event
            loop (cheaper than a thread hop); larger ones in a worker thread.
        max_result_bytes: Largest inline result (bytes, default 1 MiB); a larger
            one fails its task run with an error naming this limit.
        retention_s: Finished flow runs older than this (seconds, default 7
            days) are pruned.
        prune_interval_s: How often retention runs, seconds.
        concurrency_limits: Named limits, ``"tag=N,tag2=M"``: at most N task runs
            tagged ``tag`` run at once across the fleet.
        unschedulable_timeout_s: A task run that no connected worker could ever
            run (no worker offers it, or none is big enough) fails after this many
            seconds (default 300; 0 waits forever). A fitting worker that joins in
            time runs it.
        http: ``HOST:PORT`` of the dashboard and ``/metrics``; port 0 picks a
            free port; ``""`` or ``"off"`` serves no HTTP.
        http_port_file: If set, the bound HTTP port is written there once serving.
        idle_connection_s: A connection with no call in flight for this long
            is closed (``grpc.max_connection_idle_ms``); peers reconnect on
            their next call. Seconds, default 120.
        handshake_timeout_s: A connection that has not finished its TLS and
            HTTP/2 handshake after this long is closed, seconds (default 10).
        keepalive_s: The coordinator pings a connection silent this long and
            closes it when no answer comes within ``keepalive_timeout_s``
            (default 30 and 10 seconds); peers may ping it at most every 5 s.
        keepalive_timeout_s: See ``keepalive_s``.
        max_streams_per_connection: Calls in flight on one connection (more
            wait on the peer's side), default 100.
        tls_cert: PEM certificate chain of the coordinator: with ``tls_key``,
            the gRPC port and the dashboard speak TLS only.
        tls_key: PEM private key of ``tls_cert``.
        tls_client_ca: PEM CA bundle: every peer must present a client
            certificate it signed (mutual TLS); the certificate's common name is
            the peer's identity.
        auth_file: TOML file of token hashes and certificate names with roles
            (``fleetflow token``, ``fleetflow certs``): every call needs one.
        insecure: Serve beyond loopback without TLS and authentication anyway
            (logged as a warning at every start).
        allowed_hosts: Extra names (comma-separated) the dashboard answers to in
            the ``Host`` header, besides IP addresses, ``localhost`` and this
            machine's own names (DNS-rebinding protection).
        leader_lease_s: PostgreSQL only: the leadership lease, seconds (default
            10). The active coordinator renews it with every commit and at least
            every third of it; a standby takes over once it has run out, so a
            dead or cut-off active one is replaced within this plus
            ``leader_poll_s`` plus the restore time.
        leader_poll_s: PostgreSQL only: how often a standby checks the
            leadership, seconds (default 1).
        advertise: ``HOST:PORT`` that other coordinators name when they answer
            as standbys ("the active one is HOST:PORT"); by default the listen
            host (this machine's name for a wildcard host) and the bound port.
    """

    listen: str = "127.0.0.1:50051"
    port_file: str | None = None
    lease_ttl_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    tick_interval_s: float = 0.05
    max_infra_failures: int = 3
    lease_wait_max_s: float = 10.0
    db: str = ".fleetflow/fleetflow.db"
    synchronous: str = "NORMAL"
    commit_interval_s: float = 0.0
    commit_max_changes: int = 20_000
    inline_commit_rows: int = 500
    max_result_bytes: int = 1 << 20
    retention_s: float = 7 * 86400.0
    prune_interval_s: float = 3600.0
    concurrency_limits: str = ""
    unschedulable_timeout_s: float = 300.0
    http: str = "127.0.0.1:8265"
    http_port_file: str | None = None
    idle_connection_s: float = 120.0
    handshake_timeout_s: float = 10.0
    keepalive_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    max_streams_per_connection: int = 100
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_file: str | None = None
    insecure: bool = False
    allowed_hosts: str = ""
    leader_lease_s: float = 10.0
    leader_poll_s: float = 1.0
    advertise: str = ""

    def limits(self) -> dict[str, int]:
        """Parse ``concurrency_limits`` into ``{tag: limit}``.

        Raises:
            ValueError: an entry is not ``tag=N`` with N >= 0.
        """
        out: dict[str, int] = {}
        for item in filter(None, (p.strip() for p in self.concurrency_limits.split(","))):
            tag, sep, raw = item.partition("=")
            if not sep or not tag.strip() or not raw.strip().isdigit():
                raise ValueError(f"concurrency_limits entry {item!r}: expected TAG=N with N >= 0")
            out[tag.strip()] = int(raw)
        return out

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``FLEETFLOW_*`` variables, then overrides.

        Raises:
            ValueError: a variable does not parse as the field's type.
        """
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"FLEETFLOW_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name))
            try:
                if kind is bool:
                    if raw.strip().lower() not in _BOOLS:
                        raise ValueError(raw)
                    values[f.name] = _BOOLS[raw.strip().lower()]
                else:
                    values[f.name] = raw if kind in (str, type(None)) else kind(raw)
            except ValueError:
                raise ValueError(
                    f"FLEETFLOW_{f.name.upper()}={raw!r}: not a {kind.__name__}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)
        settings.limits()  # fail at start on a malformed limit
        for name in ("idle_connection_s", "handshake_timeout_s", "keepalive_s",
                     "keepalive_timeout_s"):  # fmt: skip
            value = getattr(settings, name)
            if not (math.isfinite(value) and 0 < value <= 86400):
                raise ValueError(f"{name} = {value!r}: must be > 0 and <= 86400 seconds")
        if not 1 <= settings.max_streams_per_connection <= 100_000:
            raise ValueError("max_streams_per_connection must be in 1..100000")
        if not 0.5 <= settings.leader_lease_s <= 3600:
            raise ValueError(f"leader_lease_s ({settings.leader_lease_s}): must be 0.5..3600 s")
        if not 0.05 <= settings.leader_poll_s <= settings.leader_lease_s:
            raise ValueError(
                f"leader_poll_s ({settings.leader_poll_s}): must be 0.05 s..leader_lease_s"
            )
        if settings.lease_ttl_s <= settings.heartbeat_interval_s:
            raise ValueError(
                f"lease_ttl_s ({settings.lease_ttl_s}) must exceed heartbeat_interval_s "
                f"({settings.heartbeat_interval_s})"
            )
        return settings
