"""``fleetflow workers``, ``fleetflow inspect`` and ``watch``'s progress bars.

Read-only views of a coordinator: rich tables for people, ``--json`` for
scripts. Registered on the ``fleetflow`` group by :mod:`fleetflow.cli`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from fleetflow._cli_credentials import credential_options
from fleetflow._cli_progress import count_parts, error_of, follow_progress, print_outcome
from fleetflow._cli_render import out_console
from fleetflow._client import DEFAULT_ADDRESS, Client, FlowRunInfo, TaskCounts, WorkerInfo
from fleetflow._stats import FlowRunStats, TaskUsage
from fleetflow.addresses import InvalidAddressError, format_addresses, parse_addresses
from fleetflow.errors import FleetflowError, RPCError

__all__ = [
    "workers_command",
    "inspect_command",
    "format_bytes",
    "flow_run_json",
    "flow_run_summary_json",
    "follow_progress",
    "print_outcome",
]

#: A worker whose last RPC is older than this is shown as late, seconds.
LATE_HEARTBEAT_S = 5.0


def check_coordinator(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: refuse a ``--coordinator`` that is not ``HOST:PORT[,HOST:PORT...]``."""
    if value is None:
        return None
    try:
        return format_addresses(parse_addresses(value))
    except InvalidAddressError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def resolve_coordinator(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """Click callback: ``--coordinator``, else FLEETFLOW_COORDINATOR, else the file's ``[client]``.

    Refuses an address that is not ``HOST:PORT[,HOST:PORT...]``, naming where it came from.
    """
    from fleetflow.settings import ClientSettings, SettingsError

    flags = {"coordinator": value} if value else {}
    try:
        resolved = ClientSettings.load(flags, flag_names={"coordinator": "--coordinator"})
        return format_addresses(parse_addresses(resolved.settings.coordinator))
    except (SettingsError, InvalidAddressError) as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def coordinator_option(fn: Any) -> Any:
    """The ``--coordinator HOST:PORT[,HOST:PORT...]`` option every client command takes.

    With it come the credential options (``--tls-ca`` and the like).
    """
    return credential_options(
        click.option(
            "--coordinator",
            "address",
            default=None,
            callback=resolve_coordinator,
            metavar="HOST:PORT",
            help=(
                "Coordinator address HOST:PORT, or several (active and standbys) as "
                "A:PORT,B:PORT (or FLEETFLOW_COORDINATOR, or [client] coordinator in "
                f"fleetflow.toml).  [default: {DEFAULT_ADDRESS}]"
            ),
        )(fn)
    )


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON instead of a table (for scripts)."
)


def format_bytes(n: float) -> str:
    """``268435456`` -> ``"256 MiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} {units[i]}" if i == 0 or n >= 10 else f"{n:.1f} {units[i]}"


def _amount(resource: str, value: float) -> str:
    return format_bytes(value) if resource in ("memory", "gpu_memory") else f"{value:g}"


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------- workers


def _workers_table(workers: list[WorkerInfo]) -> Table:
    resources = sorted({r for w in workers for r in w.capacity})
    table = Table(
        Column("worker", no_wrap=True),
        "host",
        Column("pid", justify="right"),
        Column("running", justify="right"),
        *(Column(f"{r} used/offered", justify="right") for r in resources),
        Column("cpu %", justify="right"),
        Column("memory free", justify="right"),
        Column("heartbeat", justify="right"),
        Column("tasks", justify="right"),
        title=f"{len(workers)} workers",
        title_justify="left",
    )
    gpus = any(w.gpus for w in workers)
    if gpus:
        table.add_column("gpus")
    for w in workers:
        age = Text(f"{w.heartbeat_age_s:.1f} s ago")
        if w.heartbeat_age_s > LATE_HEARTBEAT_S:
            age.stylize("bold red")
        table.add_row(
            w.worker_id,
            w.hostname,
            str(w.pid),
            str(w.running),
            *(
                f"{_amount(r, w.allocated.get(r, 0.0))} / {_amount(r, w.capacity[r])}"
                if r in w.capacity
                else "-"
                for r in resources
            ),
            f"{w.cpu_percent:.0f}",
            format_bytes(w.memory_available),
            age,
            str(len(w.task_names)),
            *(["\n".join(w.gpus) or "-"] if gpus else []),
        )
    return table


@click.command("workers")
@coordinator_option
@_json_option
def workers_command(address: str, as_json: bool) -> None:
    """List the workers connected to the coordinator: capacity, use and heartbeats."""
    try:
        with Client(address) as client:
            workers = client.list_workers()
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json([dataclasses.asdict(w) for w in workers])
        return
    if not workers:
        out_console().print(f"no workers are connected to {address}")
        return
    out_console().print(_workers_table(workers))


# ------------------------------------------------------------------- inspect


def flow_run_json(
    info: FlowRunInfo, error: dict[str, Any] | None, stats: FlowRunStats | None = None
) -> dict[str, Any]:
    """A flow run as ``fleetflow inspect --json`` prints it.

    ``usage`` holds requested against used per task (median, p95 and max over
    measured attempts) with ``advice``; ``fleet_usage`` the same task names
    over every flow run; ``time_in_state`` task-run seconds per state. All
    three are null when the coordinator does not serve GetFlowRunStats.
    """
    data = flow_run_summary_json(info)
    data.update(
        error=error,
        usage=None if stats is None else [dataclasses.asdict(t) for t in stats.tasks],
        fleet_usage=None if stats is None else [dataclasses.asdict(t) for t in stats.fleet_tasks],
        advice=None if stats is None else [a.message for a in stats.advice],
        time_in_state=None if stats is None else _time_json(stats),
        stored=None
        if stats is None
        else {
            "bytes": stats.stored_bytes,
            "objects": stats.stored_objects,
            "largest": stats.stored_largest,
        },
    )
    return data


def flow_run_summary_json(info: FlowRunInfo) -> dict[str, Any]:
    """A flow run with its per-node counts and totals (``fleetflow flow-runs --json``)."""
    data = dataclasses.asdict(info)
    data["nodes"] = [{**dataclasses.asdict(n), "finished": n.finished} for n in info.nodes]
    data.update(
        total=info.total,
        finished=info.finished,
        completed=info.completed,
        failed=info.failed,
        upstream_failed=info.upstream_failed,
        cancelled=info.cancelled,
        duration_s=info.duration_s,
    )
    return data


def _time_json(stats: FlowRunStats) -> dict[str, float]:
    t = stats.time
    return {
        "pending_s": t.pending_s,
        "queued_s": t.queued_s,
        "running_s": t.running_s,
        "awaiting_retry_s": t.awaiting_retry_s,
    }


def _stats_of(client: Client, flow_run_id: str) -> FlowRunStats | None:
    """The flow run's usage and time in state; None from a coordinator without the RPC."""
    try:
        return client.get_flow_run_stats(flow_run_id)
    except RPCError as exc:
        if exc.code == "UNIMPLEMENTED":
            return None
        raise


def _nodes_table(info: FlowRunInfo) -> Table:
    table = Table(
        Column("#", justify="right"),
        "task",
        Column("progress", min_width=20, ratio=1),
        Column("done/total", justify="right"),
        Column("running", justify="right"),
        Column("queued", justify="right"),
        Column("pending", justify="right"),
        Column("completed", justify="right", style="green"),
        Column("failed", justify="right", style="red"),
        Column("upstream failed", justify="right"),
        Column("cancelled", justify="right"),
        expand=True,
    )
    for n in info.nodes:
        if n.total is None and n.unexpanded_end:  # a map that never expanded
            done = n.unexpanded_end.lower().replace("_", " ")
        else:
            done = f"{n.finished:,}/{'?' if n.total is None else f'{n.total:,}'}"
        table.add_row(
            str(n.node),
            n.task_name + (" (map)" if n.map else ""),
            _bar(n),
            done,
            f"{n.running:,}",
            f"{n.scheduled + n.awaiting_retry:,}",
            f"{n.pending:,}",
            f"{n.completed:,}",
            f"{n.failed + n.timed_out:,}",
            f"{n.upstream_failed:,}",
            f"{n.cancelled:,}",
        )
    return table


def _bar(n: TaskCounts) -> RenderableType:
    if not n.total:
        return Text("")
    failed = n.failed + n.timed_out + n.upstream_failed + n.cancelled
    style = "red" if failed else "green"
    return ProgressBar(total=n.total, completed=n.finished, complete_style=style, width=None)


def _local_time(epoch_s: float | None) -> str:
    if not epoch_s:
        return "-"
    return dt.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


@click.command("inspect")
@click.argument("flow_run_id", metavar="FLOW_RUN_ID|TASK_RUN_ID|FLOW_RUN_ID:TASK[INDEX]")
@coordinator_option
@_json_option
@click.option(
    "--failed",
    is_flag=True,
    help="List the flow run's failed task runs (id, index, input, first error line), paged.",
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, help="With --failed: rows to skip."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=500),
    default=50,
    show_default=True,
    help="With --failed: rows per page.",
)
def inspect_command(
    flow_run_id: str, address: str, as_json: bool, failed: bool, offset: int, limit: int
) -> None:
    """Show a flow run (state, per-task counts, first failure) or a task run's attempts.

    A mapped task is one row however many task runs it has. A task run id (a
    number, as in events) or FLOW_RUN_ID:TASK[INDEX] (a map index, as in
    events) shows every attempt of that task run: worker, times, outcome,
    error. With --failed, lists every failed task run, a page at a time.
    Exits 0 unless the run failed or was cancelled.
    """
    from fleetflow._cli_control import show_task_run
    from fleetflow._cli_taskruns import parse_task_ref, show_failed, task_run_id_of

    if flow_run_id.isdigit():
        show_task_run(int(flow_run_id), address, as_json)
        return
    ref = parse_task_ref(flow_run_id)
    if ref is not None:
        try:
            with Client(address) as client:
                task_run_id = task_run_id_of(client, *ref)
        except FleetflowError as exc:
            raise click.ClickException(str(exc)) from None
        show_task_run(task_run_id, address, as_json)
        return
    if failed:
        show_failed(flow_run_id, address, offset=offset, limit=limit, as_json=as_json)
        return
    try:
        with Client(address) as client:
            info = client.get(flow_run_id)
            error = error_of(client, info)
            stats = _stats_of(client, flow_run_id)
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(flow_run_json(info, error, stats))
    else:
        out_console().print(_inspect_view(info, error, stats))
        if info.failed:
            out_console().print(
                f"[dim]every failed task run: fleetflow inspect {info.flow_run_id} --failed[/dim]"
            )
    sys.exit(1 if info.state in ("FAILED", "CANCELLED") else 0)


def _inspect_view(
    info: FlowRunInfo, error: dict[str, Any] | None, stats: FlowRunStats | None = None
) -> RenderableType:
    style = {"COMPLETED": "green", "FAILED": "red", "RUNNING": "blue"}.get(info.state, "yellow")
    header = Text.assemble(
        (info.name, "bold"),
        f"  {info.flow_run_id}  ",
        (info.state, f"bold {style}"),
    )
    duration = "running" if info.duration_s is None else f"{info.duration_s:.2f} s"
    meta = Text(
        f"submitted {_local_time(info.created_at)}, ended {_local_time(info.ended_at)}, "
        f"{duration}; {info.finished:,}/{info.total:,} task runs done, "
        f"{count_parts(info)}; last event seq {info.last_seq}",
        style="dim",
    )
    parts: list[RenderableType] = [header, meta, _nodes_table(info)]
    if stats is not None:
        parts.append(_time_view(stats))
        parts.append(
            Text(
                f"result store: {format_bytes(stats.stored_bytes)} in "
                f"{stats.stored_objects:,} objects (largest {format_bytes(stats.stored_largest)})"
                if stats.stored_objects
                else "result store: nothing stored (every payload was inline)",
                style="dim",
            )
        )
        if stats.tasks:
            parts.append(_usage_table(stats.tasks))
        parts.extend(Text(f"advice: {a.message}", style="yellow") for a in stats.advice)
    if error is not None:
        parts.append(Text(f"{error['type']}: {error['message']}", style="bold red"))
        parts.extend(Text(str(note)) for note in error["notes"])
    return Group(*parts)


# ------------------------------------------------------ usage and time in state


def _quantity(resource: str, value: float) -> str:
    return format_bytes(value) if resource == "memory" else f"{value:.2f}".rstrip("0").rstrip(".")


def _usage_table(rows: tuple[TaskUsage, ...]) -> Table:
    """Requested against used per task: cpu in cores, memory as peak resident size."""
    table = Table(
        Column("#", justify="right"),
        "task",
        Column("measured", justify="right"),
        Column("cpu req", justify="right"),
        Column("cpu used p50 / p95", justify="right"),
        Column("memory req", justify="right"),
        Column("memory peak p50 / p95", justify="right"),
        Column("duration p50 / p95", justify="right"),
        title="requested vs used (completed attempts)",
        title_justify="left",
    )
    gpus = any(t.gpu_measured_attempts for t in rows)
    if gpus:
        table.add_column("gpu req", justify="right")
        table.add_column("gpu util / memory p95", justify="right")
    for t in rows:
        cpu = t.requested.get("cpu", 0.0)
        memory = t.requested.get("memory", 0.0)
        advised = {a.resource for a in t.advice}
        table.add_row(
            str(t.node),
            t.task_name,
            f"{t.measured_attempts:,}",
            _quantity("cpu", cpu) if cpu else "-",
            Text(
                f"{_quantity('cpu', t.cpu_cores.median)} / {_quantity('cpu', t.cpu_cores.p95)}",
                style="yellow" if "cpu" in advised else "",
            ),
            format_bytes(memory) if memory else "-",
            Text(
                f"{format_bytes(t.peak_memory_bytes.median)} / "
                f"{format_bytes(t.peak_memory_bytes.p95)}",
                style="yellow" if "memory" in advised else "",
            ),
            f"{t.duration_seconds.median:.2f} s / {t.duration_seconds.p95:.2f} s",
            *(_gpu_usage_cells(t, advised) if gpus else []),
        )
    return table


def _gpu_usage_cells(t: TaskUsage, advised: set[str]) -> list[RenderableType]:
    """The gpu request, and p95 utilisation and peak GPU memory of measured attempts."""
    gpu = t.requested.get("gpu", 0.0)
    if not t.gpu_measured_attempts or t.gpu_utilization_percent is None:
        return [f"{gpu:g}" if gpu else "-", "-"]
    used = (
        f"{t.gpu_utilization_percent.p95:.0f}% / "
        f"{format_bytes(t.peak_gpu_memory_bytes.p95 if t.peak_gpu_memory_bytes else 0.0)}"
    )
    style = "yellow" if advised & {"gpu", "gpu_memory"} else ""
    return [f"{gpu:g}" if gpu else "-", Text(used, style=style)]


def _time_view(stats: FlowRunStats) -> RenderableType:
    """Where the time went: task-run seconds per state, with shares."""
    t = stats.time
    total = t.total_s
    parts = [
        ("pending (upstream)", t.pending_s),
        ("queued (for a worker)", t.queued_s),
        ("running", t.running_s),
        ("awaiting retry", t.awaiting_retry_s),
    ]
    text = Text("where time went (task-run seconds): ", style="bold")
    text.append(
        ", ".join(
            f"{name} {seconds:,.1f} s ({100 * seconds / total:.0f}%)" if total else f"{name} 0 s"
            for name, seconds in parts
        ),
        style="",
    )
    return text
