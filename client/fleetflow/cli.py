"""The ``fleetflow`` command line.

``fleetflow run FILE:FLOW`` runs a flow and prints its result: on an
embedded fleet (a coordinator and N workers started as child processes) or,
with ``--coordinator``, on a running one. ``fleetflow flow-runs`` lists flow
runs and ``fleetflow watch ID`` follows one's events. ``fleetflow
coordinator`` and ``fleetflow worker`` come from the coordinator and worker
packages, imported only when one of them is invoked, so ``import
fleetflow.cli`` stays light and the client never depends on them.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from fleetflow._cli_config import config_group
from fleetflow._cli_control import cancel_command, limit_command, prune_command, queue_command
from fleetflow._cli_credentials import credential_options
from fleetflow._cli_fleet import (
    EMBEDDED_UNSCHEDULABLE_TIMEOUT_S,
    Fleet,
    FleetOptions,
    FleetStartError,
    sigterm_raises_interrupt,
)
from fleetflow._cli_params import (
    FiniteFloatRange,
    check_required,
    convert_param,
    parse_params,
)
from fleetflow._cli_progress import count_parts, follow_plain, note_reasons, other_counts
from fleetflow._cli_render import format_event, out_console, print_failure, render_result, type_name
from fleetflow._cli_views import (
    check_coordinator,
    inspect_command,
    workers_command,
)
from fleetflow._cli_watch import flow_runs_command, watch_command
from fleetflow._client import Client, FlowRunInfo
from fleetflow._task import Flow
from fleetflow.config import flow_runner_target
from fleetflow.credentials import Credentials
from fleetflow.errors import FleetflowError
from fleetflow.loader import load_target

__all__ = [
    "main",
    "cli",
    "parse_params",
    "convert_param",
    "render_result",
    "format_event",
    "FleetStartError",
]

#: Subcommands served by other packages, imported when used: ``{name: "module:attr"}``.
LAZY_COMMANDS: dict[str, str] = {
    "coordinator": "fleetflow_coordinator.cli:command",
    "worker": "fleetflow_worker.cli:command",
    "certs": "fleetflow_coordinator.cli_security:certs_command",
    "token": "fleetflow_coordinator.cli_security:token_command",
}
#: How often ``fleetflow run`` polls the coordinator for progress, seconds.
PROGRESS_INTERVAL_S = 0.2
#: Kept importable under its old name (tests and callers use ``fleetflow.cli._print_failure``).
_print_failure = print_failure


# ------------------------------------------------------------------- the group


class LazyGroup(click.Group):
    """A click group that imports the subcommands in :data:`LAZY_COMMANDS` on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Own commands and lazy ones, sorted."""
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return a command, importing it first if it is lazy."""
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        target = LAZY_COMMANDS[cmd_name]
        module_name, _, attr = target.partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            return _unavailable(cmd_name, target, exc)
        if not isinstance(command, click.Command):
            return _unavailable(cmd_name, target, TypeError(f"{target} is not a click command"))
        return command


def _unavailable(name: str, target: str, exc: Exception) -> click.Command:
    """A stand-in command that explains why ``name`` cannot be loaded."""

    def fail() -> None:
        raise click.ClickException(f"`fleetflow {name}` is unavailable ({target}): {exc}")

    return click.Command(name, callback=fail, short_help=f"(unavailable: {exc})")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleetflow")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Configuration file (sets FLEETFLOW_CONFIG).  "
    "[default: ./fleetflow.toml, ./fleetflow.yaml, ./pyproject.toml, ~/.config/fleetflow/]",
)
@click.option("--profile", help="Profile of the configuration file (sets FLEETFLOW_PROFILE).")
def cli(config_path: str | None, profile: str | None) -> None:
    """Fleetflow: run large Python workflows across a fleet of machines."""
    # Through the environment, so that lazily loaded subcommands and the processes
    # of an embedded fleet read the same file and profile.
    if config_path:
        os.environ["FLEETFLOW_CONFIG"] = str(Path(config_path).resolve())
    if profile:
        os.environ["FLEETFLOW_PROFILE"] = profile


def main() -> None:
    """Entry point of the ``fleetflow`` console script."""
    cli.main(prog_name="fleetflow")


# ------------------------------------------------------------------------- run


def _follow(
    client: Client,
    flow_run_id: str,
    name: str,
    deadline: float | None,
    fleet: Fleet | None,
    console: Console,
) -> FlowRunInfo:
    """Show a live progress bar until the flow run ends; return its final info."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} completed"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("[yellow]{task.fields[other]}"),
        TimeElapsedColumn(),
    )
    if not console.is_terminal:  # piped or logged: plain lines (the fleet is checked too)
        return follow_plain(
            _CheckedClient(client, fleet), flow_run_id, console, PROGRESS_INTERVAL_S, deadline
        )
    seen: set[tuple[int, str]] = set()
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(name, total=None, ok=0, failed=0, other="")
        while True:
            if fleet is not None:
                fleet.check()
            info = client.get(flow_run_id)
            progress.update(
                bar,
                completed=info.finished,
                total=info.total or None,
                ok=info.completed,
                failed=info.failed,
                other=other_counts(info.upstream_failed, info.cancelled),
            )
            note_reasons(info, seen, progress.console)
            if info.is_terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"flow run {flow_run_id} did not end in time")
            time.sleep(PROGRESS_INTERVAL_S)


class _CheckedClient:
    """A client whose ``get`` first checks that the embedded fleet is alive."""

    def __init__(self, client: Client, fleet: Fleet | None) -> None:
        self.client = client
        self.fleet = fleet

    def get(self, flow_run_id: str) -> FlowRunInfo:
        if self.fleet is not None:
            self.fleet.check()
        return self.client.get(flow_run_id)


def _load_flow(target: str) -> tuple[str, Flow]:
    try:
        _, obj = load_target(target)
    except (ValueError, ImportError, FileNotFoundError, AttributeError) as exc:
        raise click.BadParameter(str(exc), param_hint="FILE_OR_MODULE:FLOW") from None
    if not isinstance(obj, Flow):
        raise click.BadParameter(
            f"{target} is a {type(obj).__name__}, not a @flow", param_hint="FILE_OR_MODULE:FLOW"
        )
    module = target.rpartition(":")[0]
    if module.endswith(".py") or Path(module).is_file():
        module = str(Path(module).resolve())
    return module, obj


def _write_output(path: Path, result: Any) -> None:
    path.write_text(json.dumps(result, default=str, indent=2) + "\n")


@cli.command("run")
@click.argument("target", metavar="FILE_OR_MODULE:FLOW")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A flow parameter; repeatable.",
)
@click.option(
    "--coordinator",
    "address",
    envvar="FLEETFLOW_COORDINATOR",
    metavar="HOST:PORT",
    callback=check_coordinator,
    help="Run on this coordinator (or A:PORT,B:PORT) instead of starting an embedded fleet "
    "[default: the configuration file's flow_runners.default].",
)
@credential_options
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of the embedded fleet.  [default: CPU count]",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the result to this file as JSON.",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up if the flow run has not ended after this long.",
)
@click.option(
    "--cpu",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="CPUs each embedded worker offers.  [default: the machine's, shared out]",
)
@click.option(
    "--memory",
    metavar="QUANTITY",
    default=None,
    help="Memory each embedded worker offers, e.g. 4Gi.  [default: the machine's, shared out]",
)
@click.option(
    "--resource",
    "resources",
    multiple=True,
    metavar="NAME=AMOUNT",
    help="Custom capacity of each embedded worker, e.g. gpu=1. Repeatable.",
)
@click.option(
    "--pool",
    "pools",
    multiple=True,
    metavar="NAME",
    help="Worker pool the embedded workers serve (repeatable).  [default: default]",
)
@click.option(
    "--unschedulable-timeout",
    "unschedulable_timeout_s",
    type=FiniteFloatRange(min=0),
    default=EMBEDDED_UNSCHEDULABLE_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Embedded fleet: fail a task run none of its workers can run after this long "
    "(0 waits forever). Its workers are fixed, so by default such a task fails at once.",
)
@click.option(
    "--keep-logs",
    is_flag=True,
    help="Keep the embedded fleet's log folder even when the run succeeds, and print its path.",
)
@click.option(
    "--cancel-on-interrupt/--no-cancel-on-interrupt",
    default=True,
    show_default=True,
    help="On Ctrl-C (or SIGTERM), cancel the flow run this command started.",
)
def run_command(
    target: str,
    params: tuple[str, ...],
    address: str | None,
    workers: int | None,
    output: Path | None,
    timeout: float | None,
    cpu: float | None,
    memory: str | None,
    resources: tuple[str, ...],
    pools: tuple[str, ...],
    unschedulable_timeout_s: float,
    keep_logs: bool,
    cancel_on_interrupt: bool,
) -> None:
    """Run the flow FLOW from FILE_OR_MODULE and print its result.

    Without --coordinator, a coordinator and --workers workers are started on
    127.0.0.1 for this run and stopped afterwards. Their workers all register
    before the flow run is submitted, and a task none of them can run (it
    needs a resource or pool they lack, or no worker has loaded it) fails at
    once, naming what it needs and what the fleet offers. Ctrl-C cancels the
    flow run this command started and says so.

    Example: fleetflow run examples/stdlib_stats.py:stdlib_stats -p root=/usr/lib/python3.11
    """
    module, flow = _load_flow(target)
    kwargs = parse_params(flow, params)
    check_required(flow, kwargs)
    options = _fleet_options(cpu, memory, resources, pools, unschedulable_timeout_s)
    out, err = out_console(), Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    fleet: Fleet | None = None
    flow_run_id = "(not submitted)"
    code = 1
    with sigterm_raises_interrupt():
        try:
            if address is None:
                address, local_workers = flow_runner_target()
            if address is None:
                n = workers or local_workers or os.cpu_count() or 1
                fleet = Fleet(module, n, Path(tempfile.mkdtemp(prefix="fleetflow-run-")), options)
                address = fleet.start()
                err.print(
                    f"embedded fleet: coordinator {address}, {n} worker{'s' if n != 1 else ''}, "
                    f"logs in {fleet.log_path}"
                )
                if fleet.dashboard_url:
                    err.print(f"dashboard: {fleet.dashboard_url}")
            elif options != FleetOptions(unschedulable_timeout_s=unschedulable_timeout_s):
                err.print(
                    "[yellow]--cpu, --memory, --resource and --pool apply to the "
                    "embedded fleet only; ignored with --coordinator[/]"
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            local = Credentials() if fleet is not None else None  # embedded: plaintext loopback
            with Client(address, credentials=local) as client:
                if fleet is not None:
                    fleet.wait_for_workers(lambda: len(client.list_workers()))
                handle = client.submit(flow, **kwargs)
                flow_run_id = handle.id
                err.print(f"flow run {flow_run_id} ({flow.name}) submitted to {address}")
                info = _follow(client, flow_run_id, flow.name, deadline, fleet, err)
                try:
                    result = handle.result(timeout=30.0)
                except Exception as exc:  # noqa: BLE001 - the flow's own failure, re-raised here
                    if info.state == "COMPLETED":
                        raise  # the result could not be fetched or unpickled
                    print_failure(err, exc, flow_run_id)
                    _print_failed_task_runs(err, client, info, address, embedded=fleet is not None)
                else:
                    out.print(render_result(result))
                    if output is not None:
                        _write_output(output, result)
                        err.print(f"result written to {output}")
                    code = 0
        except KeyboardInterrupt:
            code = 130
            _interrupted(err, address, flow_run_id, cancel_on_interrupt, embedded=fleet is not None)
        except TimeoutError as exc:
            err.print(f"[red]timed out:[/] {exc}")
        except click.ClickException as exc:
            err.print(f"[red]error:[/] {exc.format_message()}")
        except Exception as exc:  # noqa: BLE001 - report, stop the fleet, exit 1
            err.print(Text(f"error: {type_name(exc)}: {exc}", style="red"))
        finally:
            if fleet is not None:
                fleet.stop()
                if code == 0 and not keep_logs:
                    shutil.rmtree(fleet.log_dir, ignore_errors=True)
                else:
                    err.print(f"fleet logs: {fleet.log_path} (folder {fleet.log_dir})")
            if fleet is not None or handle_seen(flow_run_id):
                err.print(f"wall time: {time.monotonic() - started:.2f} s")
    sys.exit(code)


#: Failed task runs ``fleetflow run`` lists after a failure.
FAILED_SHOWN = 10


def _print_failed_task_runs(
    err: Console, client: Client, info: FlowRunInfo, address: str, *, embedded: bool
) -> None:
    """After a failed run: its first failed task runs (ids next to map indexes) and counts."""
    from fleetflow._cli_taskruns import FAILED_STATES, input_text

    err.print(f"{count_parts(info)}")
    if not info.failed:
        return
    try:
        page = client.list_task_runs(info.flow_run_id, states=FAILED_STATES, limit=FAILED_SHOWN)
    except FleetflowError:
        return  # an older coordinator: the counts above must do
    shown = len(page.task_runs)
    err.print(f"failed task runs ({shown} of {page.total:,}):")
    for row in page.task_runs:
        where = input_text(row)
        err.print(
            Text(
                f"  task run {row.task_run_id}  {row.task_name}[{row.index}]"
                + (f"  ({where})" if where else "")
                + f"  {row.error}"
            ),
            highlight=False,
        )
    if not embedded:
        err.print(
            f"all of them: fleetflow inspect {info.flow_run_id} --failed --coordinator {address}"
        )


def _fleet_options(
    cpu: float | None,
    memory: str | None,
    resources: tuple[str, ...],
    pools: tuple[str, ...],
    unschedulable_timeout_s: float,
) -> FleetOptions:
    """Check the embedded fleet's options here, so a typo fails before anything starts."""
    from fleetflow.resources import parse_quantity

    if memory is not None:
        try:
            parse_quantity(memory, "memory")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--memory") from None
    for resource in resources:
        name, sep, amount = resource.partition("=")
        try:
            ok = bool(sep and name.strip()) and 0 <= float(amount) < math.inf
        except ValueError:
            ok = False
        if not ok:
            raise click.BadParameter(
                f"expected NAME=AMOUNT (a finite amount >= 0), got {resource!r}",
                param_hint="--resource",
            )
    for pool in pools:
        if not pool.strip():
            raise click.BadParameter("a pool name must not be empty", param_hint="--pool")
    return FleetOptions(cpu, memory, resources, pools, unschedulable_timeout_s)


def _interrupted(
    err: Console, address: str | None, flow_run_id: str, cancel: bool, *, embedded: bool
) -> None:
    """After Ctrl-C: cancel the flow run this command started (if asked), and say what happened."""
    if not handle_seen(flow_run_id) or address is None:
        err.print("[yellow]interrupted before the flow run was submitted[/]")
        return
    if not cancel:
        err.print(
            f"[yellow]interrupted; flow run {flow_run_id} goes on. Cancel it with: "
            f"fleetflow cancel {flow_run_id} --coordinator {address}[/]"
        )
        return
    try:
        with Client(address, credentials=Credentials() if embedded else None) as client:
            cancelled = client.cancel(flow_run_id)
    except (FleetflowError, KeyboardInterrupt) as exc:
        err.print(
            f"[red]interrupted; cancelling flow run {flow_run_id} failed ({exc or 'Ctrl-C'}). "
            f"Cancel it with: fleetflow cancel {flow_run_id} --coordinator {address}[/]"
        )
        return
    err.print(
        f"[yellow]interrupted: cancelled flow run {flow_run_id} "
        f"({cancelled} task runs cancelled)[/]"
    )


def handle_seen(flow_run_id: str) -> bool:
    """Whether ``fleetflow run`` got as far as submitting (else its error is its only line)."""
    return flow_run_id != "(not submitted)"


# ------------------------------------------------------------ workers, inspect

cli.add_command(flow_runs_command)
cli.add_command(watch_command)
cli.add_command(workers_command)
cli.add_command(inspect_command)
cli.add_command(cancel_command)
cli.add_command(limit_command)
cli.add_command(prune_command)
cli.add_command(queue_command)
cli.add_command(config_group)


if __name__ == "__main__":  # pragma: no cover
    main()
