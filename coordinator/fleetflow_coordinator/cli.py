"""``fleetflow coordinator`` / ``python -m fleetflow_coordinator``."""

from __future__ import annotations

import asyncio
import gc

import click

from fleetflow_coordinator.settings import Settings

__all__ = ["GC_THRESHOLDS", "command"]

#: The cyclic garbage collector's thresholds in the coordinator process
#: (Python's default: 700, 10, 10). The coordinator keeps millions of
#: long-lived objects (task runs, events, digests) and allocates a few per
#: task run in the hot path; at the default, collections of the older
#: generations rescanned the survivors often enough to take about a tenth of
#: its CPU in W1 (py-spy, benchmarks/PROFILE.md, issue 18). A young
#: collection now waits for 50,000 new objects (about a millisecond to scan).
GC_THRESHOLDS = (50_000, 20, 20)


@click.command(name="coordinator")
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Address to bind [default: 127.0.0.1:50051].",
)
@click.option("--port-file", default=None, help="Write the bound port here once serving.")
@click.option(
    "--lease-ttl", "lease_ttl_s", type=float, default=None, help="Lease TTL, seconds [default: 10]."
)
@click.option(
    "--heartbeat-interval",
    "heartbeat_interval_s",
    type=float,
    default=None,
    help="Worker heartbeat interval, seconds [default: 1].",
)
@click.option(
    "--db",
    default=None,
    help="SQLite database path, :memory: for a throwaway run, or postgresql://USER@HOST/DB "
    "(several coordinators may share it: one is active, the others stand by) "
    "[default: .fleetflow/fleetflow.db].",
)
@click.option(
    "--leader-lease",
    "leader_lease_s",
    type=float,
    default=None,
    help="PostgreSQL: leadership lease, seconds; a standby takes over this long after the "
    "active coordinator fell silent [default: 10].",
)
@click.option(
    "--advertise",
    default=None,
    metavar="HOST:PORT",
    help="Address standbys name as the active one [default: the listen address].",
)
@click.option(
    "--retention",
    "retention_s",
    type=float,
    default=None,
    help="Prune finished flow runs older than this many seconds [default: 7 days].",
)
@click.option(
    "--http",
    default=None,
    metavar="HOST:PORT",
    help="Serve the dashboard and /metrics here; port 0 picks one; 'off' serves none "
    "[default: 127.0.0.1:8265, skipped with a warning if taken].",
)
@click.option("--http-port-file", default=None, help="Write the bound HTTP port here.")
@click.option(
    "--unschedulable-timeout",
    "unschedulable_timeout_s",
    type=float,
    default=None,
    help="Fail task runs no connected worker could run after this many seconds "
    "[default: 300; 0 waits forever].",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="TAG=N",
    help="Concurrency limit for a tag (repeatable).",
)
@click.option(
    "--tls-cert",
    default=None,
    metavar="PATH",
    help="PEM certificate (chain) of this coordinator: serve TLS only (with --tls-key).",
)
@click.option("--tls-key", default=None, metavar="PATH", help="PEM private key of --tls-cert.")
@click.option(
    "--tls-client-ca",
    default=None,
    metavar="PATH",
    help="Require client certificates signed by this PEM CA bundle (mutual TLS).",
)
@click.option(
    "--auth-file",
    default=None,
    metavar="PATH",
    help="Token hashes and certificate names with roles (fleetflow token / fleetflow certs): "
    "every call needs a credential.",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Serve beyond loopback without TLS and authentication anyway (warns at every start).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A name the dashboard answers to in the Host header (repeatable); IP addresses, "
    "localhost and this machine's names always are.",
)
@click.option(
    "--result-store",
    default=None,
    metavar="URL",
    help="Where payloads over the inline limit go: s3://bucket/prefix, a shared path, "
    "any fsspec URL [default: hosted on this coordinator's disk, next to --db, served "
    "to workers and clients over gRPC].",
)
@click.option(
    "--result-store-options",
    default=None,
    metavar="JSON",
    help='fsspec options for --result-store, e.g. \'{"endpoint_url": "http://minio:9000"}\' '
    "(no credentials: each process reads its own environment).",
)
@click.option(
    "--inline-max-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Results, arguments and parameters whose pickle is larger go to the result store "
    "[default: 65536].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def command(
    listen: str | None,
    port_file: str | None,
    lease_ttl_s: float | None,
    heartbeat_interval_s: float | None,
    db: str | None,
    leader_lease_s: float | None,
    advertise: str | None,
    retention_s: float | None,
    http: str | None,
    http_port_file: str | None,
    unschedulable_timeout_s: float | None,
    limits: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    auth_file: str | None,
    insecure: bool | None,
    allowed_hosts: tuple[str, ...],
    result_store: str | None,
    result_store_options: str | None,
    inline_max_bytes: int | None,
    log_level: str,
) -> None:
    """Run the coordinator: holds flow state and leases task runs to workers.

    Every setting also comes from a FLEETFLOW_<FIELD> variable or the
    [coordinator] section of the configuration file (see `fleetflow config
    show`); flags win over the environment, which wins over the file.
    """
    from fleetflow.startup import exit_on_signal_during_startup

    # Signals first: until the coordinator serves, SIGTERM/SIGINT end it at
    # once (status 143/130), even while it opens or restores a big database.
    exit_on_signal_during_startup("coordinator")
    from fleetflow.settings import SettingsError, flags_from_click

    from fleetflow_coordinator.logs import configure_logging
    from fleetflow_coordinator.server import serve

    flags, names = flags_from_click(click.get_current_context(), Settings)
    for field, values, flag in (
        ("concurrency_limits", limits, "--limit"),
        ("allowed_hosts", allowed_hosts, "--allowed-host"),
    ):
        if values:  # repeatable options: one comma-separated setting
            flags[field] = ",".join(values)
            names[field] = flag
    try:
        settings = Settings.load(flags, flag_names=names).settings
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(log_level)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop

        uvloop.run(serve(settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        asyncio.run(serve(settings))
    except (RuntimeError, ValueError) as exc:  # StoreError, refusing to start: exit code 1
        raise click.ClickException(str(exc)) from None
