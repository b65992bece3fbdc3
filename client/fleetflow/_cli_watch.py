"""``fleetflow flow-runs`` and ``fleetflow watch``: the list of flow runs, and one followed live."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click
from rich.console import Console
from rich.table import Column, Table

from fleetflow._cli_render import format_event, out_console
from fleetflow._cli_views import (
    coordinator_option,
    flow_run_summary_json,
    follow_progress,
    print_outcome,
)
from fleetflow._client import Client
from fleetflow.errors import FleetflowError
from fleetflow.events import FlowEvent

__all__ = ["flow_runs_command", "watch_command"]


def _local_time(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s).strftime("%m-%d %H:%M:%S")


@click.command("flow-runs")
@coordinator_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def flow_runs_command(address: str, as_json: bool) -> None:
    """List the coordinator's flow runs."""
    try:
        with Client(address) as client:
            runs = client.list_flow_runs()
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([flow_run_summary_json(run) for run in runs], indent=2))
        return
    id_width = max((len(run.flow_run_id) for run in runs), default=2)
    table = Table(
        Column("id", no_wrap=True, min_width=id_width),
        "flow",
        "state",
        "created",
        "duration",
        "task runs",
        "failed",
        "upstream failed",
        "cancelled",
    )
    for run in runs:
        duration = "" if run.duration_s is None else f"{run.duration_s:.1f} s"
        table.add_row(
            run.flow_run_id,
            run.name,
            run.state,
            _local_time(run.created_at),
            duration,
            f"{run.finished}/{run.total}",
            str(run.failed),
            str(run.upstream_failed),
            str(run.cancelled),
        )
    out_console().print(table)


@click.command("watch")
@click.argument("flow_run_id")
@coordinator_option
@click.option(
    "--events", "events", is_flag=True, help="Print one line per event instead of progress bars."
)
@click.option(
    "--after-seq",
    type=click.IntRange(min=0),
    default=0,
    help="With --events: skip events up to this seq.",
)
def watch_command(flow_run_id: str, address: str, events: bool, after_seq: int) -> None:
    """Follow a flow run until it ends: live progress bars per task, or its events.

    A mapped task is one bar however many task runs it has. Exits 0 when the
    flow run completed, 1 otherwise, 130 on Ctrl-C (the flow run goes on).
    """
    if not events:
        console = Console(stderr=False)
        try:
            with Client(address) as client:
                info = follow_progress(client, flow_run_id, console)
                print_outcome(client, info, console)
        except FleetflowError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(0 if info.state == "COMPLETED" else 1)
    last: FlowEvent | None = None
    try:
        with Client(address) as client:
            for event in client.watch(flow_run_id, after_seq=after_seq):
                click.echo(format_event(event))
                last = event
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)  # as the progress bars do (click would print "Aborted!" and exit 1)
    sys.exit(0 if last is not None and last.kind == "FLOW_RUN_COMPLETED" else 1)
