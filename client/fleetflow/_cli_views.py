"""``fleetflow workers`` and ``fleetflow inspect``: read-only views of a coordinator.

Rich tables for people, ``--json`` for scripts. Registered on the ``fleetflow``
group by :mod:`fleetflow.cli`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from fleetflow._client import DEFAULT_ADDRESS, Client, FlowRunInfo, TaskCounts, WorkerInfo
from fleetflow.errors import FleetflowError, FlowRunCancelled, FlowRunFailed
from fleetflow.serde import RemoteTaskError

__all__ = ["workers_command", "inspect_command", "format_bytes", "flow_run_json"]

#: A worker whose last RPC is older than this is shown as late, seconds.
LATE_HEARTBEAT_S = 5.0


def _coordinator_option(fn: Any) -> Any:
    return click.option(
        "--coordinator",
        "address",
        envvar="FLEETFLOW_COORDINATOR",
        default=DEFAULT_ADDRESS,
        show_default=True,
        metavar="HOST:PORT",
        help="Coordinator address HOST:PORT.",
    )(fn)


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
    return format_bytes(value) if resource == "memory" else f"{value:g}"


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
        )
    return table


@click.command("workers")
@_coordinator_option
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
        Console().print(f"no workers are connected to {address}")
        return
    Console().print(_workers_table(workers))


# ------------------------------------------------------------------- inspect


def flow_run_json(info: FlowRunInfo, error: dict[str, Any] | None) -> dict[str, Any]:
    """A flow run as ``fleetflow inspect --json`` prints it."""
    data = dataclasses.asdict(info)
    data["nodes"] = [{**dataclasses.asdict(n), "finished": n.finished} for n in info.nodes]
    data.update(
        total=info.total,
        finished=info.finished,
        completed=info.completed,
        failed=info.failed,
        duration_s=info.duration_s,
        error=error,
    )
    return data


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
        expand=True,
    )
    for n in info.nodes:
        table.add_row(
            str(n.node),
            n.task_name + (" (map)" if n.map else ""),
            _bar(n),
            f"{n.finished:,}/{'?' if n.total is None else f'{n.total:,}'}",
            f"{n.running:,}",
            f"{n.scheduled + n.awaiting_retry:,}",
            f"{n.pending:,}",
            f"{n.completed:,}",
            f"{n.failed + n.timed_out:,}",
            f"{n.upstream_failed:,}",
        )
    return table


def _bar(n: TaskCounts) -> RenderableType:
    if not n.total:
        return Text("")
    failed = n.failed + n.timed_out + n.upstream_failed + n.cancelled
    style = "red" if failed else "green"
    return ProgressBar(total=n.total, completed=n.finished, complete_style=style, width=None)


def _error_of(client: Client, info: FlowRunInfo) -> dict[str, Any] | None:
    """The first failure of a FAILED flow run: type, message and remote traceback."""
    if info.state != "FAILED":
        return None
    try:
        client.handle(info.flow_run_id).result(timeout=10.0)
    except (FlowRunFailed, FlowRunCancelled) as exc:
        return {"type": type(exc).__name__, "message": str(exc), "notes": []}
    except FleetflowError:
        raise
    except Exception as exc:  # noqa: BLE001 - the task's own exception, re-raised here
        return _exception_json(exc)
    return None


def _exception_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RemoteTaskError):
        type_name = exc.type_name
        message = str(exc.args[0] if exc.args else "").removeprefix(f"{type_name}: ")
    else:
        cls = type(exc)
        type_name = f"{cls.__module__}.{cls.__qualname__}"
        message = str(exc)
    return {"type": type_name, "message": message, "notes": list(getattr(exc, "__notes__", []))}


def _local_time(epoch_s: float | None) -> str:
    if not epoch_s:
        return "-"
    return dt.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


@click.command("inspect")
@click.argument("flow_run_id", metavar="FLOW_RUN_ID|TASK_RUN_ID")
@_coordinator_option
@_json_option
def inspect_command(flow_run_id: str, address: str, as_json: bool) -> None:
    """Show a flow run (state, per-task counts, first failure) or a task run's attempts.

    A mapped task is one row however many task runs it has. A task run id (a
    number, as in events) shows every attempt: worker, times, outcome, error.
    Exits 0 unless the run failed or was cancelled.
    """
    if flow_run_id.isdigit():
        from fleetflow._cli_control import show_task_run

        show_task_run(int(flow_run_id), address, as_json)
        return
    try:
        with Client(address) as client:
            info = client.get(flow_run_id)
            error = _error_of(client, info)
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(flow_run_json(info, error))
    else:
        Console().print(_inspect_view(info, error))
    sys.exit(1 if info.state in ("FAILED", "CANCELLED") else 0)


def _inspect_view(info: FlowRunInfo, error: dict[str, Any] | None) -> RenderableType:
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
        f"{info.completed:,} completed, {info.failed:,} failed; last event seq {info.last_seq}",
        style="dim",
    )
    parts: list[RenderableType] = [header, meta, _nodes_table(info)]
    if error is not None:
        parts.append(Text(f"{error['type']}: {error['message']}", style="bold red"))
        parts.extend(Text(str(note)) for note in error["notes"])
    return Group(*parts)
