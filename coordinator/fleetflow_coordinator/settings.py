"""Coordinator settings: one frozen dataclass, one schema for flags, environment and file.

Every field is declared with :func:`fleetflow.settings.setting`; its rules are
checked when the object is built (so code, flags, ``FLEETFLOW_<FIELD>``
variables and the ``[coordinator]`` section of the configuration file are held
to the same ranges), and :meth:`Settings.load` merges those sources in that
order of precedence (flags, environment, file, defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetflow.settings import (
    Resolved,
    SettingsError,
    check_address,
    resolve,
    setting,
    validate,
)

__all__ = ["Settings", "SECTION"]

#: The configuration file's section for these settings.
SECTION = "coordinator"


def _http(value: str) -> None:
    if value.strip().lower() not in ("", "off"):
        check_address("http", value)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the coordinator process can be told.

    Each field can be set by a flag (``--lease-ttl``), an environment variable
    named ``FLEETFLOW_<FIELD>`` in upper case (``FLEETFLOW_LEASE_TTL_S=5``) or
    the ``[coordinator]`` section of the configuration file
    (``lease_ttl_s = 5``); see :mod:`fleetflow.config`.

    Raises:
        fleetflow.settings.SettingsError: (a ValueError, on construction) a
            field is of the wrong type or out of range; the message names it.
    """

    listen: str = setting("127.0.0.1:50051", help="HOST:PORT to bind; port 0 picks a free port.")
    port_file: str | None = setting(
        None, help="If set, the bound port is written there once serving."
    )
    lease_ttl_s: float = setting(
        10.0,
        gt=0,
        flag="--lease-ttl",
        help="Seconds a worker may stay silent before its leases expire.",
    )
    heartbeat_interval_s: float = setting(
        1.0, gt=0, help="Seconds between worker heartbeats (told to workers)."
    )
    tick_interval_s: float = setting(
        0.05, gt=0, le=60, help="Seconds between timer checks (retries, expiry)."
    )
    max_infra_failures: int = setting(
        3,
        ge=1,
        help="Attempts per task run that may end through the infrastructure (worker lost) "
        "before the task run fails.",
    )
    max_leases_per_worker: int = setting(
        1000,
        ge=1,
        le=1_000_000,
        help="Most slots one worker holds at once (a lease batch is one slot), whatever its "
        "task runs request: bounds task runs that request no resources. Default 1000, a "
        "worker's default max_concurrency.",
    )
    lease_wait_max_s: float = setting(
        10.0, ge=0, le=3600, help="Upper bound on a worker's long poll, seconds."
    )
    worker_sessions: bool = setting(
        True,
        help="Serve the WorkerSession stream, which carries a worker's LeaseTasks, "
        "ReportOutcomes and ReleaseLeases as messages of one stream. Off: it answers "
        "UNIMPLEMENTED and workers use the unary calls.",
    )
    db: str = setting(
        ".fleetflow/fleetflow.db",
        help='SQLite database path, ":memory:" for a throwaway run, or a '
        "postgresql://USER@HOST:PORT/DBNAME URL (hot standby: several coordinators may share "
        "one PostgreSQL database, one is active).",
    )
    synchronous: str = setting(
        "NORMAL",
        choices=("NORMAL", "FULL"),
        help="NORMAL survives a crash of the coordinator process, FULL also power loss (or "
        "with PostgreSQL a crash of the database server): SQLite's synchronous pragma, "
        "PostgreSQL's synchronous_commit off / on.",
    )
    commit_interval_s: float = setting(
        0.0,
        ge=0,
        le=60,
        help="Extra group-commit window, seconds. With 0, a commit starts as soon as there is "
        "something to store, and every change made while one commit is being written joins the "
        "next one, so batches grow with load without adding latency when idle.",
    )
    commit_max_changes: int = setting(
        20_000, ge=1, help="A batch this large (rows) is stored without waiting."
    )
    inline_commit_rows: int = setting(
        2000,
        ge=0,
        help="Batches up to this many rows are written on the event loop (cheaper than a thread "
        "hop); larger ones in a worker thread.",
    )
    max_result_bytes: int = setting(
        1 << 20,
        ge=1,
        help="Largest inline result, bytes (default 1 MiB); a larger one fails its task run with "
        "an error naming this limit.",
    )
    retention_s: float = setting(
        7 * 86400.0,
        gt=0,
        allow_infinite=True,
        help="Finished flow runs older than this (seconds, default 7 days) are pruned.",
    )
    prune_interval_s: float = setting(3600.0, gt=0, help="How often retention runs, seconds.")
    concurrency_limits: str = setting(
        "",
        flag="--limit",
        help='Named limits, "tag=N,tag2=M": at most N task runs tagged tag run at once.',
    )
    unschedulable_timeout_s: float = setting(
        300.0,
        ge=0,
        help="A task run that no connected worker could ever run fails after this many seconds "
        "(0 waits forever). A fitting worker that joins in time runs it.",
    )
    http: str = setting(
        "127.0.0.1:8265",
        help='HOST:PORT of the dashboard and /metrics; port 0 picks a free port; "" or "off" '
        "serves no HTTP.",
    )
    http_port_file: str | None = setting(
        None, help="If set, the bound HTTP port is written there once serving."
    )
    idle_connection_s: float = setting(
        120.0,
        gt=0,
        le=86400,
        help="A connection with no call in flight for this long is closed "
        "(grpc.max_connection_idle_ms); peers reconnect on their next call. Seconds.",
    )
    handshake_timeout_s: float = setting(
        10.0,
        gt=0,
        le=86400,
        help="A connection that has not finished its TLS and HTTP/2 handshake after this long "
        "is closed, seconds.",
    )
    keepalive_s: float = setting(
        30.0,
        gt=0,
        le=86400,
        help="The coordinator pings a connection silent this long and closes it when no answer "
        "comes within keepalive_timeout_s; peers may ping it at most every 5 s. Seconds.",
    )
    keepalive_timeout_s: float = setting(10.0, gt=0, le=86400, help="See keepalive_s.")
    max_streams_per_connection: int = setting(
        100, ge=1, le=100_000, help="Calls in flight on one connection (more wait)."
    )
    tls_cert: str | None = setting(
        None,
        help="PEM certificate chain of the coordinator: with tls_key, the gRPC port and the "
        "dashboard speak TLS only.",
    )
    tls_key: str | None = setting(None, help="PEM private key of tls_cert.")
    tls_client_ca: str | None = setting(
        None,
        help="PEM CA bundle: every peer must present a client certificate it signed (mutual "
        "TLS); the certificate's common name is the peer's identity.",
    )
    auth_file: str | None = setting(
        None,
        help="TOML file of token hashes and certificate names with roles (fleetflow token, "
        "fleetflow certs): every call needs one.",
    )
    insecure: bool = setting(
        False,
        help="Serve beyond loopback without TLS and authentication anyway (logged as a "
        "warning at every start).",
    )
    allowed_hosts: str = setting(
        "",
        flag="--allowed-host",
        help="Extra names (comma-separated) the dashboard answers to in the Host header, "
        "besides IP addresses, localhost and this machine's own names (DNS-rebinding "
        "protection).",
    )
    leader_lease_s: float = setting(
        10.0,
        ge=0.5,
        le=3600,
        help="PostgreSQL only: the leadership lease, seconds. The active coordinator renews "
        "it with every commit and at least every third of it; a standby takes over once it "
        "has run out, so a dead or cut-off active one is replaced within this plus "
        "leader_poll_s plus the restore time.",
    )
    leader_poll_s: float = setting(
        1.0, ge=0.05, help="PostgreSQL only: how often a standby checks the leadership, seconds."
    )
    advertise: str = setting(
        "",
        help='HOST:PORT that other coordinators name when they answer as standbys ("the '
        "active one is HOST:PORT\"); by default the listen host (this machine's name for a "
        "wildcard host) and the bound port.",
    )

    result_store: str = setting(
        "",
        help="Where payloads above inline_max_bytes go: an fsspec URL (s3://bucket/prefix, "
        "/mnt/shared/fleetflow, file:///...); empty (default) hosts the store on this "
        "coordinator's disk, in results/ next to the database (.fleetflow/results in the "
        "working directory with PostgreSQL; standbys need a shared store), served to "
        "workers and clients over gRPC in chunks.",
    )
    result_store_options: str = setting(
        "",
        help='fsspec storage options as a JSON object (e.g. {"endpoint_url": '
        '"http://minio:9000"}); sent to workers and clients, so never credentials: each '
        "process takes those from its own environment.",
    )
    inline_max_bytes: int = setting(
        64 << 10,
        ge=0,
        help="A result, argument or parameter whose pickle is larger than this (bytes) is "
        "written to the result store by its producer; only its reference travels.",
    )
    map_inline_bytes: int = setting(
        16 << 20,
        ge=0,
        help="Inline results the coordinator keeps per map node, bytes: a child of an N-item "
        "map stores results larger than map_inline_bytes / N (at least 64 bytes inline).",
    )
    result_chunk_bytes: int = setting(
        1 << 20, ge=1, help="Target size of one chunk of a stored list, bytes."
    )
    store_min_free_bytes: int = setting(
        1 << 30,
        ge=0,
        help="The hosted store refuses an upload that would leave less free disk than this, bytes.",
    )
    orphan_grace_s: float = setting(
        3600.0,
        ge=0,
        help="Stored objects that no flow run refers to are deleted once this old, seconds.",
    )

    max_message_bytes: int = setting(
        256 << 20,
        ge=1 << 20,
        help="Largest gRPC message the coordinator sends or receives, bytes. Large payloads "
        "travel through the result store, so every message of the data paths stays under "
        "16 MiB; tests run with 16 MiB to prove it.",
    )

    def __post_init__(self) -> None:
        validate(self)

    def _check(self) -> None:
        """Rules that involve several fields, or a field's text form."""
        check_address("listen", self.listen)
        _http(self.http)
        if not self.db:
            raise SettingsError("db", "db must not be empty (use :memory: for no file)")
        try:
            self.limits()
        except ValueError as exc:
            raise SettingsError("concurrency_limits", str(exc)) from None
        if self.leader_poll_s > self.leader_lease_s:
            raise SettingsError(
                "leader_poll_s",
                f"leader_poll_s ({self.leader_poll_s:g}) must be at most leader_lease_s "
                f"({self.leader_lease_s:g})",
            )
        if self.advertise:
            check_address("advertise", self.advertise)
        if self.lease_ttl_s <= self.heartbeat_interval_s:
            raise SettingsError(
                "lease_ttl_s",
                f"lease_ttl_s ({self.lease_ttl_s:g}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s:g})",
            )

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
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        flag_names: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        config: Any = "auto",
    ) -> Resolved[Settings]:
        """Resolve the settings: flags, then environment, then file, then defaults.

        Args:
            flags: ``{field: value}`` from the command line (None: not given).
            flag_names: ``{field: "--flag"}`` as typed, for messages.
            environ: The environment (default ``os.environ``).
            config: A :class:`fleetflow.config.Config`; ``"auto"`` finds and
                reads the file in effect; None reads none.

        Returns:
            The settings and where each value came from.

        Raises:
            fleetflow.settings.SettingsError: a value is malformed or out of
                range, or the file's section has an unknown key.
        """
        if config == "auto":
            from fleetflow.config import load_config

            config = load_config(environ=environ)
        return resolve(
            cls,
            section=SECTION,
            flags=flags,
            flag_names=flag_names,
            environ=environ,
            config=config,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``FLEETFLOW_*`` variables, then ``overrides`` (no file).

        Raises:
            fleetflow.settings.SettingsError: a value is malformed or out of range.
        """
        return cls.load(overrides, environ=environ, config=None).settings
