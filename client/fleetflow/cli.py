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

import contextlib
import datetime as dt
import importlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

import click
import psutil
from rich.console import Console, RenderableType
from rich.pretty import Pretty
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from fleetflow._cli_config import config_group
from fleetflow._cli_control import cancel_command, limit_command, prune_command, queue_command
from fleetflow._cli_credentials import credential_options
from fleetflow._cli_views import (
    check_coordinator,
    coordinator_option,
    flow_run_summary_json,
    follow_progress,
    inspect_command,
    print_outcome,
    workers_command,
)
from fleetflow._client import Client, FlowRunInfo
from fleetflow._task import Flow
from fleetflow.config import flow_runner_target
from fleetflow.credentials import Credentials
from fleetflow.errors import FleetflowError
from fleetflow.events import FlowEvent
from fleetflow.loader import load_target
from fleetflow.serde import RemoteTaskError

__all__ = ["main", "cli", "parse_params", "convert_param"]

#: Subcommands served by other packages, imported when used: ``{name: "module:attr"}``.
LAZY_COMMANDS: dict[str, str] = {
    "coordinator": "fleetflow_coordinator.cli:command",
    "worker": "fleetflow_worker.cli:command",
    "certs": "fleetflow_coordinator.cli_security:certs_command",
    "token": "fleetflow_coordinator.cli_security:token_command",
}
#: How often ``fleetflow run`` polls the coordinator for progress, seconds.
PROGRESS_INTERVAL_S = 0.2
#: How long the embedded coordinator may take to start serving, seconds.
COORDINATOR_START_TIMEOUT_S = 30.0
#: How long stopped child processes get to exit after SIGTERM, seconds.
STOP_GRACE_S = 10.0

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_SCALARS: dict[str, type] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "Path": Path,
    "pathlib.Path": Path,
}


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


# ------------------------------------------------------------- parameter values


def _type_hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints fall back to raw annotations
        return {}


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _auto(raw: str) -> Any:
    """JSON when it parses (numbers, lists, objects, true/false/null), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def convert_param(name: str, raw: str, annotation: Any = inspect.Parameter.empty) -> Any:
    """Convert one ``--param`` value to the flow parameter's annotated type.

    ``int``, ``float``, ``bool``, ``str`` and ``Path`` (also ``X | None``, where
    ``none``/``null`` give None) convert directly; any other or no annotation
    parses ``raw`` as JSON and falls back to the string itself.

    Args:
        name: Parameter name, for error messages.
        raw: The text after ``NAME=``.
        annotation: The parameter's annotation (a type, or a string when the
            hints could not be resolved).

    Returns:
        The converted value.

    Raises:
        click.BadParameter: ``raw`` does not fit the annotated type.
    """
    annotation, optional = _unwrap_optional(annotation)
    if optional and raw.strip().lower() in ("none", "null"):
        return None
    if isinstance(annotation, str):
        annotation = _SCALARS.get(annotation.strip(), inspect.Parameter.empty)
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise click.BadParameter(
            f"{name}={raw!r}: expected a boolean (true/false)", param_hint="--param"
        )
    if annotation in (int, float):
        try:
            return annotation(raw)
        except ValueError:
            raise click.BadParameter(
                f"{name}={raw!r}: expected {annotation.__name__}", param_hint="--param"
            ) from None
    if annotation is str:
        return raw
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return annotation(raw)
    return _auto(raw)


def parse_params(flow: Flow, pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``NAME=VALUE`` strings into keyword parameters of ``flow``.

    Args:
        flow: The flow whose signature and type hints drive the conversion.
        pairs: ``--param`` values as typed.

    Returns:
        ``{name: value}`` ready for ``flow.build(**params)``.

    Raises:
        click.BadParameter: a pair has no ``=``, names no parameter of the
            flow, or its value does not fit the parameter's type.
    """
    parameters = flow.signature.parameters
    hints = _type_hints(flow.fn)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--param")
        param = parameters.get(name)
        by_keyword = param is not None and param.kind in (
            param.POSITIONAL_OR_KEYWORD,
            param.KEYWORD_ONLY,
        )
        if by_keyword:
            out[name] = convert_param(name, raw, hints.get(name, param.annotation))  # type: ignore[union-attr]
        elif param is None and takes_kwargs:
            out[name] = _auto(raw)
        else:
            known = ", ".join(
                p.name
                for p in parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
            raise click.BadParameter(
                f"flow {flow.name!r} has no parameter {name!r} (it takes: {known or 'none'})",
                param_hint="--param",
            )
    return out


# ------------------------------------------------------------- embedded fleet


class FleetStartError(click.ClickException):
    """The embedded coordinator or its workers could not be started or died."""


class _Fleet:
    """A coordinator and N workers run as child processes on 127.0.0.1.

    Their stdout and stderr go to one log file under ``log_dir``. Each child
    leads its own process group, so a Ctrl-C in the terminal reaches only
    this process, which then stops them with SIGTERM and, after
    :data:`STOP_GRACE_S`, SIGKILLs their process groups. POSIX only.

    Args:
        module: The FILE_OR_MODULE the workers import tasks from.
        workers: Number of worker processes.
        log_dir: Folder for the log file and the coordinator's port file.
    """

    def __init__(self, module: str, workers: int, log_dir: Path) -> None:
        self.module = module
        self.workers = workers
        self.log_dir = log_dir
        self.log_path = log_dir / "fleet.log"
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        #: The coordinator's dashboard, ``http://127.0.0.1:PORT/``, once started.
        self.dashboard_url = ""

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        # The embedded fleet speaks plaintext on loopback: no credentials of a remote one.
        remote = ("FLEETFLOW_TLS_", "FLEETFLOW_TOKEN", "FLEETFLOW_AUTH_FILE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(remote)}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                process_group=0,
            )

    def start(self) -> str:
        """Start the coordinator, wait until it serves, then start the workers.

        Returns:
            The coordinator's address, ``127.0.0.1:PORT``.

        Raises:
            FleetStartError: the coordinator exited or did not serve within
                :data:`COORDINATOR_START_TIMEOUT_S`.
        """
        port_file = self.log_dir / "coordinator.port"
        http_port_file = self.log_dir / "dashboard.port"
        self.coordinator = self._spawn(
            [
                "-m",
                "fleetflow_coordinator",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                # The embedded fleet's state lives and dies with this run.
                "--db",
                str(self.log_dir / "fleetflow.db"),
                "--http",
                "127.0.0.1:0",
                "--http-port-file",
                str(http_port_file),
            ]
        )
        port = self._wait_for_port(port_file)
        with contextlib.suppress(FileNotFoundError, ValueError):  # written before the gRPC port
            self.dashboard_url = f"http://127.0.0.1:{int(http_port_file.read_text())}/"
        address = f"127.0.0.1:{port}"
        # The machine's CPUs and memory are shared out among the local workers, so
        # that N workers do not each offer (and start pool processes for) every CPU.
        cpu_share = max(1.0, (os.cpu_count() or 1) / self.workers)
        memory_share = int(psutil.virtual_memory().total / self.workers)
        for _ in range(self.workers):
            self.worker_processes.append(
                self._spawn(
                    [
                        "-m",
                        "fleetflow_worker",
                        "--coordinator",
                        address,
                        "--module",
                        self.module,
                        "--cpu",
                        f"{cpu_share:g}",
                        "--memory",
                        str(memory_share),
                    ]
                )
            )
        return address

    def _wait_for_port(self, port_file: Path) -> int:
        assert self.coordinator is not None
        give_up_at = time.monotonic() + COORDINATOR_START_TIMEOUT_S
        while time.monotonic() < give_up_at:
            code = self.coordinator.poll()
            if code is not None:
                raise FleetStartError(
                    f"the coordinator exited with code {code} before serving; see {self.log_path}"
                )
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(port_file.read_text().strip())
            time.sleep(0.05)
        raise FleetStartError(
            f"the coordinator did not serve within {COORDINATOR_START_TIMEOUT_S:g} s; "
            f"see {self.log_path}"
        )

    def check(self) -> None:
        """Raise :class:`FleetStartError` if the coordinator or every worker has exited."""
        if self.coordinator is not None and self.coordinator.poll() is not None:
            raise FleetStartError(
                f"the coordinator exited with code {self.coordinator.returncode}; "
                f"see {self.log_path}"
            )
        if self.worker_processes and all(p.poll() is not None for p in self.worker_processes):
            codes = sorted({p.returncode for p in self.worker_processes})
            raise FleetStartError(f"every worker exited (codes {codes}); see {self.log_path}")

    def stop(self) -> None:
        """Stop every started process within about :data:`STOP_GRACE_S`.

        Workers get SIGTERM first, so that while they drain they can still
        report outcomes to the coordinator; the coordinator gets SIGTERM once
        they are gone (or the grace period is over). Whatever is left is
        SIGKILLed together with its process group.
        """
        give_up_at = time.monotonic() + STOP_GRACE_S
        try:
            self._terminate(self.worker_processes, give_up_at)
            if self.coordinator is not None:
                self._terminate([self.coordinator], max(give_up_at, time.monotonic() + 1.0))
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, kill below
            pass
        finally:
            for process in [*self.worker_processes, *filter(None, [self.coordinator])]:
                # Each child leads its own process group; SIGKILL the group so
                # that helpers it started (process pools) go too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    @staticmethod
    def _terminate(processes: list[subprocess.Popen[bytes]], give_up_at: float) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, give_up_at - time.monotonic()))


@contextlib.contextmanager
def _sigterm_raises_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the block runs, so cleanup code runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -------------------------------------------------------------------- rendering


def _cell(value: Any) -> RenderableType:
    return Text(value) if isinstance(value, str) else Pretty(value)


def _records_table(rows: list[dict]) -> Table:
    columns = list(dict.fromkeys(str(key) for row in rows for key in row))
    table = Table(*columns, show_edge=False, pad_edge=False)
    for row in rows:
        by_name = {str(k): v for k, v in row.items()}
        table.add_row(*(_cell(by_name.get(c, "")) for c in columns))
    return table


def render_result(value: Any) -> RenderableType:
    """Render a flow's result for the terminal.

    A dict becomes a key/value table where a value that is a non-empty list
    of dicts becomes a nested table; anything else is pretty-printed.
    """
    if not isinstance(value, dict):
        return Pretty(value)
    table = Table("key", "value", title="result", title_justify="left")
    for key, item in value.items():
        is_records = isinstance(item, list) and item and all(isinstance(r, dict) for r in item)
        table.add_row(str(key), _records_table(item) if is_records else _cell(item))
    return table


def _type_name(exc: BaseException) -> str:
    if isinstance(exc, RemoteTaskError):
        return exc.type_name
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _print_failure(console: Console, exc: BaseException, flow_run_id: str) -> None:
    if isinstance(exc, RemoteTaskError):  # its text already starts with the type: say it once
        message = str(exc.args[0]).removeprefix(f"{exc.type_name}: ")
    else:
        message = str(exc)
    console.print(f"[bold red]flow run {flow_run_id} failed[/]")
    console.print(Text(f"{_type_name(exc)}: {message}", style="red"))
    for note in getattr(exc, "__notes__", ()):
        console.print(Text(str(note)), highlight=False)


def format_event(event: FlowEvent) -> str:
    """One line for an event: seq, local time, kind, then the fields that are set."""
    stamp = dt.datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    parts = [f"{event.seq:>6}", stamp, f"{event.kind:<26}"]
    if event.task_name:
        parts.append(f"node={event.node} {event.task_name}[{event.index}]")
    if event.attempt:
        parts.append(f"attempt={event.attempt}")
    if event.worker_id:
        parts.append(f"worker={event.worker_id}")
    if event.count:
        parts.append(f"count={event.count}")
    if event.retry_at:
        parts.append(f"retry_in={max(0.0, event.retry_at - event.time):.2f}s")
    if event.message:
        parts.append(event.message)
    if event.error is not None:
        parts.append(f"error={event.error}")
    return " ".join(parts).rstrip()


# ------------------------------------------------------------------------- run


def _follow(
    client: Client,
    flow_run_id: str,
    name: str,
    deadline: float | None,
    fleet: _Fleet | None,
    console: Console,
) -> FlowRunInfo:
    """Show a live progress bar until the flow run ends; return its final info."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} completed"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(name, total=None, ok=0, failed=0)
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
            )
            if info.is_terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"flow run {flow_run_id} did not end in time")
            time.sleep(PROGRESS_INTERVAL_S)


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
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up if the flow run has not ended after this long.",
)
def run_command(
    target: str,
    params: tuple[str, ...],
    address: str | None,
    workers: int | None,
    output: Path | None,
    timeout: float | None,
) -> None:
    """Run the flow FLOW from FILE_OR_MODULE and print its result.

    Without --coordinator, a coordinator and --workers workers are started on
    127.0.0.1 for this run and stopped afterwards.

    Example: fleetflow run examples/stdlib_stats.py:stdlib_stats -p root=/usr/lib/python3.11
    """
    module, flow = _load_flow(target)
    kwargs = parse_params(flow, params)
    out, err = Console(), Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    fleet: _Fleet | None = None
    flow_run_id = "(not submitted)"
    code = 1
    with _sigterm_raises_interrupt():
        try:
            if address is None:
                address, local_workers = flow_runner_target()
            if address is None:
                n = workers or local_workers or os.cpu_count() or 1
                fleet = _Fleet(module, n, Path(tempfile.mkdtemp(prefix="fleetflow-run-")))
                address = fleet.start()
                err.print(
                    f"embedded fleet: coordinator {address}, {n} workers, logs in {fleet.log_path}"
                )
                if fleet.dashboard_url:
                    err.print(f"dashboard: {fleet.dashboard_url}")
            deadline = None if timeout is None else time.monotonic() + timeout
            local = Credentials() if fleet is not None else None  # embedded: plaintext loopback
            with Client(address, credentials=local) as client:
                handle = client.submit(flow, **kwargs)
                flow_run_id = handle.id
                err.print(f"flow run {flow_run_id} ({flow.name}) submitted to {address}")
                info = _follow(client, flow_run_id, flow.name, deadline, fleet, err)
                try:
                    result = handle.result(timeout=30.0)
                except Exception as exc:  # noqa: BLE001 - the flow's own failure, re-raised here
                    if info.state == "COMPLETED":
                        raise  # the result could not be fetched or unpickled
                    _print_failure(err, exc, flow_run_id)
                else:
                    out.print(render_result(result))
                    if output is not None:
                        _write_output(output, result)
                        err.print(f"result written to {output}")
                    code = 0
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            code = 130
        except TimeoutError as exc:
            err.print(f"[red]timed out:[/] {exc}")
        except click.ClickException as exc:
            err.print(f"[red]error:[/] {exc.format_message()}")
        except Exception as exc:  # noqa: BLE001 - report, stop the fleet, exit 1
            err.print(Text(f"error: {_type_name(exc)}: {exc}", style="red"))
        finally:
            if fleet is not None:
                fleet.stop()
                if code == 0:
                    shutil.rmtree(fleet.log_dir, ignore_errors=True)
                else:
                    err.print(f"fleet logs: {fleet.log_path}")
            if fleet is not None or handle_seen(flow_run_id):
                err.print(f"wall time: {time.monotonic() - started:.2f} s")
    sys.exit(code)


def handle_seen(flow_run_id: str) -> bool:
    """Whether ``fleetflow run`` got as far as submitting (else its error is its only line)."""
    return flow_run_id != "(not submitted)"


# ---------------------------------------------------------- flow-runs and watch


def _local_time(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s).strftime("%m-%d %H:%M:%S")


@cli.command("flow-runs")
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
        )
    Console().print(table)


@cli.command("watch")
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
    flow run completed, 1 otherwise.
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
    sys.exit(0 if last is not None and last.kind == "FLOW_RUN_COMPLETED" else 1)


# ------------------------------------------------------------ workers, inspect

cli.add_command(workers_command)
cli.add_command(inspect_command)
cli.add_command(cancel_command)
cli.add_command(limit_command)
cli.add_command(prune_command)
cli.add_command(queue_command)
cli.add_command(config_group)


if __name__ == "__main__":  # pragma: no cover
    main()
