"""Task runs from the CLI: ``inspect FLOW_RUN_ID --failed`` and ``inspect FLOW_RUN_ID:TASK[INDEX]``.

A failed task run is found by its flow run, task and map index, and every list
shows task-run ids next to map indexes, so ``fleetflow inspect TASK_RUN_ID``
can follow any row.
"""

from __future__ import annotations

import dataclasses
import json
import re

import click
from rich.table import Column, Table
from rich.text import Text

from fleetflow._cli_render import out_console
from fleetflow._client import Client
from fleetflow._taskruns import TaskRunPage, TaskRunSummary
from fleetflow.errors import FleetflowError

__all__ = ["parse_task_ref", "task_run_id_of", "show_failed", "input_text", "FAILED_STATES"]

#: The states ``--failed`` lists: the task runs that failed by themselves.
FAILED_STATES = ("FAILED", "TIMED_OUT")
#: Characters of an input's repr shown in a list.
INPUT_CHARS = 60

#: TASK is the task's name (``module:qualname``) or the part after its last ``:``.
_REF = re.compile(r"^(?P<flow>[^:\s]+):(?P<task>[^\[\]\s]+)(?:\[(?P<index>\d+)\])?$")


def parse_task_ref(text: str) -> tuple[str, str, int] | None:
    """``"FLOW_RUN_ID:TASK[INDEX]"`` -> ``(flow_run_id, task, index)``; ``TASK`` alone is index 0.

    Returns:
        None when ``text`` is not of that form (a flow run id or task run id).

    Raises:
        click.BadParameter: ``text`` has a ``[`` but no whole-number INDEX in it
            (``run:task[x]`` was looked up as a flow run id and "not found").
    """
    match = _REF.match(text)
    if match is None:
        if "[" in text or "]" in text:
            raise click.BadParameter(
                f"{text!r}: expected FLOW_RUN_ID:TASK[INDEX], INDEX a whole number >= 0",
                param_hint="FLOW_RUN_ID|TASK_RUN_ID|FLOW_RUN_ID:TASK[INDEX]",
            )
        return None
    return match["flow"], match["task"], int(match["index"] or 0)


def task_run_id_of(client: Client, flow_run_id: str, task: str, index: int) -> int:
    """The id of the task run of ``task`` with map index ``index`` in a flow run.

    Raises:
        click.ClickException: there is no such task run (or no such task).
    """
    page = client.list_task_runs(flow_run_id, task_name=task, index=index, limit=2)
    if not page.task_runs:
        raise click.ClickException(
            f"flow run {flow_run_id} has no task run {task}[{index}] "
            "(the task may not have expanded yet, or has fewer items)"
        )
    return page.task_runs[0].task_run_id


def input_text(row: TaskRunSummary) -> str:
    """The input: the literal item's repr when the coordinator sent it, else where it is from."""
    if row.input_item:
        try:
            from fleetflow.serde import loads

            text = repr(loads(row.input_item))
        except Exception:  # noqa: BLE001 - a type this process cannot load: say where it is
            text = ""
        if text:
            name = row.input_summary.split("=", 1)[0]
            if len(text) > INPUT_CHARS:
                text = text[: INPUT_CHARS - 3] + "..."
            return f"{name}={text}" if name else text
    return row.input_summary


def _failed_table(page: TaskRunPage) -> Table:
    table = Table(
        Column("task run", justify="right", no_wrap=True),
        Column("task[index]", no_wrap=True),
        "state",
        Column("attempt", justify="right"),
        "worker",
        "input",
        Column("error", overflow="fold"),
        title=f"failed task runs {page.offset + 1 if page.task_runs else 0}-"
        f"{page.offset + len(page.task_runs)} of {page.total:,}",
        title_justify="left",
    )
    for row in page.task_runs:
        table.add_row(
            str(row.task_run_id),
            f"{row.task_name}[{row.index}]",
            row.state,
            str(row.attempt),
            row.worker_id or "-",
            input_text(row),
            Text(row.error or "-", style="red"),
        )
    return table


def show_failed(flow_run_id: str, address: str, *, offset: int, limit: int, as_json: bool) -> None:
    """Print one page of the flow run's failed task runs (``inspect --failed``)."""
    try:
        with Client(address) as client:
            page = client.list_task_runs(
                flow_run_id, states=FAILED_STATES, offset=offset, limit=limit
            )
    except FleetflowError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        rows = []
        for row in page.task_runs:
            data = dataclasses.asdict(row)
            data.pop("input_item")
            data["input"] = input_text(row)
            rows.append(data)
        click.echo(json.dumps({"total": page.total, "offset": offset, "task_runs": rows}, indent=2))
        return
    console = out_console()
    if not page.total:
        console.print(f"flow run {flow_run_id} has no failed task runs")
        return
    console.print(_failed_table(page))
    shown = offset + len(page.task_runs)
    if shown < page.total:
        console.print(
            f"[dim]next page: fleetflow inspect {flow_run_id} --failed --offset {shown}"
            f" --limit {limit}[/dim]"
        )
    console.print("[dim]details of one: fleetflow inspect TASK_RUN_ID[/dim]")
