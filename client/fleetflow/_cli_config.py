"""``fleetflow config show``: the effective settings of every process, and where each came from.

Registered on the ``fleetflow`` group by :mod:`fleetflow.cli`. The coordinator
and worker settings classes are imported when the command runs (the client
package never imports them at import time).
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from fleetflow._cli_render import out_console
from fleetflow.config import LOCAL_RUNNER, load_config
from fleetflow.settings import ClientSettings, Resolved, SettingsError, mask

__all__ = ["config_group", "SETTINGS_CLASSES"]

#: The settings class of each section: ``{section: "module:Class"}``.
SETTINGS_CLASSES: dict[str, str] = {
    "coordinator": "fleetflow_coordinator.settings:Settings",
    "worker": "fleetflow_worker.settings:WorkerSettings",
    "client": "fleetflow.settings:ClientSettings",
}


def _class(section: str) -> Any:
    module, _, name = SETTINGS_CLASSES[section].partition(":")
    return getattr(importlib.import_module(module), name)


def _shown(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


@click.group("config")
def config_group() -> None:
    """Inspect the configuration file and the effective settings."""


@config_group.command("show")
@click.option(
    "--section",
    "sections",
    multiple=True,
    type=click.Choice(list(SETTINGS_CLASSES)),
    help="Show only this section (repeatable).  [default: all]",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
def show_command(sections: tuple[str, ...], as_json: bool) -> None:
    """Print every setting's effective value and its source, secrets masked.

    The value a process would use if started here now, with no flags: from
    FLEETFLOW_<FIELD> variables, the configuration file (FLEETFLOW_CONFIG,
    ./fleetflow.toml, ./fleetflow.yaml, ./pyproject.toml [tool.fleetflow], or
    the user's config directory) and its active profile (FLEETFLOW_PROFILE),
    or the default. Every section of the file is checked.
    """
    try:
        config = load_config()
        resolved: dict[str, Resolved[Any]] = {
            section: _class(section).load(config=config) for section in SETTINGS_CLASSES
        }
        runner = config.flow_runner()
        worker_executor = getattr(resolved["worker"].settings, "executor", None)
        executor = config.executor(worker_executor if isinstance(worker_executor, str) else None)
        if runner.default != LOCAL_RUNNER:
            ClientSettings.load(config=config, profile=runner.default)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    chosen = sections or tuple(SETTINGS_CLASSES)
    if as_json:
        data: dict[str, Any] = {
            "file": None if config.path is None else str(config.path),
            "profile": config.profile,
            "profiles": list(config.profiles),
        }
        for section in chosen:
            data[section] = {
                name: {"value": _shown(value), "source": source}
                for name, value, source in resolved[section].rows()
            }
        data["executors"] = [
            {"name": e.name, "type": e.type, **mask("options", e.options)} for e in config.executors
        ]
        data["flow_runners"] = {"default": runner.default, "local_workers": runner.local_workers}
        click.echo(json.dumps(data, indent=2, default=str))
        return
    console = out_console()
    where = "none found (defaults and environment only)" if config.path is None else config.path
    console.print(f"configuration file: {where}")
    console.print(
        f"profile: {config.profile or '(none)'}"
        + (f"  (profiles: {', '.join(config.profiles)})" if config.profiles else "")
    )
    for section in chosen:
        # titles and cells are text, not rich markup: "[worker]" would vanish as a tag
        table = Table("setting", "value", "source", title=escape(f"[{section}]"))
        table.title_justify = "left"
        for name, value, source in resolved[section].rows():
            table.add_row(escape(name), escape(repr(_shown(value))), escape(source))
        console.print(table)
    table = Table("name", "type", "options", title="executors", title_justify="left")
    for entry in config.executors:
        table.add_row(entry.name, entry.type, json.dumps(mask("options", entry.options)))
    if executor is not None:
        table.caption = f"a worker started here uses: {executor.name} ({executor.type})"
    console.print(table)
    target = (
        "an embedded local fleet"
        if runner.default == LOCAL_RUNNER
        else (f"the coordinator of profile {runner.default!r}")
    )
    console.print(f"flow_runners: `fleetflow run` without --coordinator uses {target}")
