"""CLI commands that change or drill into a running fleet: cancel, limit, prune, task runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys

import click
from rich.table import Table

from fleetflow._cli_params import FiniteFloatRange
from fleetflow._cli_render import out_console
from fleetflow._cli_views import coordinator_option, format_bytes
from fleetflow._client import Client
from fleetflow._taskruns import AttemptInfo, TaskRunInfo
from fleetflow.errors import FleetflowError

__all__ = ["cancel_command", "limit_command", "prune_command", "queue_command", "show_task_run"]


@click.command("cancel")
@click.argument("flow_run_id")
@coordinator_option
def cancel_command(flow_run_id: str, address: str) -> None:
    """Cancel a flow run: queued task runs at once, running ones on their workers."""
    try:
        with Client(address) as client:
            cancelled = client.cancel(flow_run_id)
            state = client.get(flow_run_id).state if not cancelled else "CANCELLED"
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if state in ("COMPLETED", "FAILED"):  # it had ended before: say so, not "0 cancelled"
        click.echo(f"flow run {flow_run_id} had already ended {state}: nothing to cancel")
        return
    click.echo(f"flow run {flow_run_id}: {cancelled} task runs cancelled")


@click.command("limit")
@click.argument("tag", required=False)
@click.argument("limit", required=False, type=click.IntRange(min=0))
@click.option("--remove", is_flag=True, help="Remove the limit instead of setting it.")
@click.option("--list", "list_", is_flag=True, help="List every limit with its use now.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print JSON.")
@coordinator_option
def limit_command(
    tag: str | None, limit: int | None, remove: bool, list_: bool, as_json: bool, address: str
) -> None:
    """Allow at most LIMIT task runs tagged TAG to run at once across the fleet.

    A limit set here is stored by the coordinator and outlives its restarts.
    LIMIT 0 holds every task run tagged TAG (none starts, none fails) until the
    limit is raised or removed. With --list, shows every limit: running and
    queued task runs, and where it was set (here, or the coordinator's settings).
    """
    if list_:
        _list_limits(address, as_json)
        return
    if tag is None or (limit is None) != remove:
        raise click.UsageError("give TAG and LIMIT, TAG --remove, or --list")
    try:
        with Client(address) as client:
            client.set_concurrency_limit(tag, None if remove else limit)
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    held = " (task runs tagged so wait until it is raised or removed)" if limit == 0 else ""
    click.echo(f"{tag}: {'no limit' if remove else limit}{held}")


def _list_limits(address: str, as_json: bool) -> None:
    try:
        with Client(address) as client:
            limits = client.list_concurrency_limits()
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(x) for x in limits], indent=2))
        return
    if not limits:
        out_console().print("no concurrency limits are set")
        return
    table = Table("tag", "limit", "running", "waiting", "set by")
    for x in limits:
        table.add_row(x.tag, str(x.limit), str(x.running), str(x.waiting), x.source)
    out_console().print(table)


@click.command("prune")
@click.option(
    "--older-than",
    "older_than_s",
    type=FiniteFloatRange(min=0),
    default=7 * 86400.0,
    show_default=True,
    help="Delete finished flow runs that ended more than this many seconds ago.",
)
@coordinator_option
def prune_command(older_than_s: float, address: str) -> None:
    """Delete finished flow runs (with their task runs and events) past an age."""
    try:
        with Client(address) as client:
            pruned = client.prune(older_than_s)
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"pruned {len(pruned)} flow runs")


@click.command("queue")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts and autoscalers).")
@coordinator_option
def queue_command(as_json: bool, address: str) -> None:
    """Show queued demand per worker pool and resource shape, and why any is unschedulable."""
    from fleetflow.resources import format_quantity

    try:
        with Client(address) as client:
            demand = client.demand()
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(d) for d in demand], indent=2))
        return
    table = Table("pool", "each needs", "waiting", "tasks", "unschedulable", "waiting on limit")
    for d in demand:
        shape = ", ".join(f"{k}={format_quantity(k, v)}" for k, v in sorted(d.resources.items()))
        table.add_row(
            d.pool,
            shape,
            str(d.waiting),
            ", ".join(d.task_names),
            d.unschedulable_reason or "-",
            ", ".join(d.waiting_on_limits) or "-",
        )
    out_console().print(table if demand else "nothing is waiting for a worker")


def _time(epoch_s: float) -> str:
    if not epoch_s:
        return "-"
    return dt.datetime.fromtimestamp(epoch_s).strftime("%H:%M:%S.%f")[:-3]


def _gpu_cells(a: AttemptInfo) -> list[str]:
    """An attempt's devices, peak GPU memory and utilisation, for the attempts table."""
    if not a.gpu_devices:
        return ["-", "-", "-"]
    util = "-" if a.gpu_utilization_percent is None else f"{a.gpu_utilization_percent:.0f}%"
    peak = format_bytes(a.peak_gpu_memory_bytes) if a.peak_gpu_memory_bytes else "-"
    return [",".join(a.gpu_devices), peak, util]


def show_task_run(task_run_id: int, address: str, as_json: bool) -> None:
    """Print one task run with its attempt history (``fleetflow inspect TASK_RUN_ID``)."""
    try:
        with Client(address) as client:
            info: TaskRunInfo = client.get_task_run(task_run_id)
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(info), indent=2, default=str))
    else:
        console = out_console()
        console.print(
            f"[bold]task run {info.task_run_id}[/bold] {info.task_name}[{info.index}] "
            f"of flow run {info.flow_run_id} (node {info.node}): [bold]{info.state}[/bold]"
        )
        gpus = any(a.gpu_devices for a in info.attempts)
        columns = ["attempt", "worker", "started", "ended", "seconds", "outcome", "error"]
        table = Table(*columns, *(["gpus", "gpu memory peak", "gpu util"] if gpus else []))
        for a in info.attempts:
            error = f"{a.error.type}: {a.error.message}" if a.error else a.message
            seconds = f"{a.duration_s:.3f}" if a.duration_s is not None else "-"
            outcome = a.outcome + (" (infrastructure)" if a.infrastructure else "")
            table.add_row(
                str(a.attempt),
                a.worker_id or "-",
                _time(a.started_at),
                _time(a.ended_at),
                seconds,
                outcome,
                error,
                *(_gpu_cells(a) if gpus else []),
            )
        console.print(table)
        last = next((a for a in reversed(info.attempts) if a.error and a.error.traceback), None)
        if last is not None:
            console.print(f"[dim]traceback of attempt {last.attempt}:[/dim]")
            console.print(last.error.traceback, markup=False, highlight=False)
    sys.exit(1 if info.state in ("FAILED", "TIMED_OUT", "CANCELLED", "UPSTREAM_FAILED") else 0)
