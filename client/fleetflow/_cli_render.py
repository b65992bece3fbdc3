"""How ``fleetflow run`` and ``fleetflow watch --events`` render results, failures and events."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from rich.console import Console, RenderableType
from rich.pretty import Pretty
from rich.table import Table
from rich.text import Text

from fleetflow.events import FlowEvent
from fleetflow.serde import RemoteTaskError

__all__ = ["render_result", "format_event", "print_failure", "type_name", "out_console"]

#: Width of tables when the output is no terminal and COLUMNS is not set.
PIPED_WIDTH = 200


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


def type_name(exc: BaseException) -> str:
    if isinstance(exc, RemoteTaskError):
        return exc.type_name
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def print_failure(console: Console, exc: BaseException, flow_run_id: str) -> None:
    if isinstance(exc, RemoteTaskError):  # its text already starts with the type: say it once
        message = str(exc.args[0]).removeprefix(f"{exc.type_name}: ")
    else:
        message = str(exc)
    console.print(f"[bold red]flow run {flow_run_id} failed[/]")
    console.print(Text(f"{type_name(exc)}: {message}", style="red"))
    for note in getattr(exc, "__notes__", ()):
        console.print(Text(str(note)), highlight=False)


def format_event(event: FlowEvent) -> str:
    """One line for an event: seq, local time, kind, then the fields that are set."""
    stamp = dt.datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    parts = [f"{event.seq:>6}", stamp, f"{event.kind:<26}"]
    if event.task_name:
        parts.append(f"node={event.node} {event.task_name}[{event.index}]")
        if event.task_run_id:
            parts.append(f"task_run={event.task_run_id}")
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


def out_console() -> Console:
    """A console for stdout: :data:`PIPED_WIDTH` columns when it is no terminal.

    Rich draws 80 columns for a pipe or a file; COLUMNS, when set, still wins.
    """
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPED_WIDTH)
    return console
