"""Live progress of a flow run (``fleetflow watch``) and its one-line outcome."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from fleetflow._client import Client, FlowRunInfo, TaskCounts
from fleetflow.errors import (
    FlowRunCancelled,
    FlowRunFailed,
    FlowRunNotFound,
    RPCError,
)
from fleetflow.serde import RemoteTaskError

__all__ = [
    "follow_progress",
    "print_outcome",
    "error_of",
    "count_parts",
    "other_counts",
    "note_reasons",
    "follow_plain",
    "progress_line",
    "WATCH_INTERVAL_S",
    "MAX_TASK_BARS",
]

#: How often ``fleetflow watch`` polls the coordinator, seconds.
WATCH_INTERVAL_S = 0.2
#: Most per-task bars ``fleetflow watch`` shows; further tasks share one bar.
MAX_TASK_BARS = 30
#: When the output is no terminal: a progress line at most this often, seconds.
PLAIN_EVERY_S = 1.0


def _bar_label(n: TaskCounts) -> str:
    return f"{n.node} {n.task_name}" + (" (map)" if n.map else "")


def follow_progress(
    client: Client,
    flow_run_id: str,
    console: Console,
    *,
    interval_s: float = WATCH_INTERVAL_S,
    timeout_s: float | None = None,
) -> FlowRunInfo:
    """Show live progress bars, one per task (node) and one in all, until the run ends.

    A map node is one bar however many task runs it has; beyond
    :data:`MAX_TASK_BARS` tasks, the rest share one bar.

    Args:
        client: A connected client.
        flow_run_id: The flow run.
        console: Where the bars are drawn.
        interval_s: Seconds between polls.
        timeout_s: Give up after this long (None: wait until the run ends).

    Returns:
        The flow run's final info.

    Raises:
        TimeoutError: ``timeout_s`` passed first.
        FleetflowError: the flow run does not exist, or the coordinator failed.
    """
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[blue]{task.fields[running]} running"),
        TextColumn("[green]{task.fields[ok]} ok"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("[yellow]{task.fields[other]}"),
        TimeElapsedColumn(),
    )
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if not console.is_terminal:  # piped or logged: plain lines, not an invisible live display
        return follow_plain(client, flow_run_id, console, interval_s, deadline)
    empty = {"running": 0, "ok": 0, "failed": 0, "other": ""}
    seen: set[tuple[int, str]] = set()
    with Progress(*columns, console=console) as progress:
        info = client.get(flow_run_id)
        overall = progress.add_task(f"[bold]{info.name}", total=None, **empty)
        bars: dict[int, Any] = {}
        while True:
            rest = [0] * 7  # finished, total, running, completed, failed, upstream, cancelled
            for n in info.nodes:
                row = (
                    n.finished,
                    n.total or 0,
                    n.running,
                    n.completed,
                    n.failed + n.timed_out,
                    n.upstream_failed,
                    n.cancelled,
                )
                if n.node < MAX_TASK_BARS:
                    if n.node not in bars:
                        bars[n.node] = progress.add_task("  " + _bar_label(n), total=None, **empty)
                    progress.update(bars[n.node], **_fields(row))
                else:
                    rest = [a + b for a, b in zip(rest, row, strict=True)]
            if len(info.nodes) > MAX_TASK_BARS:
                if -1 not in bars:
                    more = len(info.nodes) - MAX_TASK_BARS
                    bars[-1] = progress.add_task(f"  ({more} more tasks)", total=None, **empty)
                progress.update(bars[-1], **_fields(rest))
            progress.update(overall, **_fields(_totals(info)))
            note_reasons(info, seen, progress.console)
            if info.is_terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"flow run {flow_run_id} did not end in time")
            time.sleep(interval_s)
            info = client.get(flow_run_id)


def progress_line(info: FlowRunInfo) -> str:
    """One plain line of progress: ``"HH:MM:SS name: 120/400 done, 5 running; counts"``."""
    running = sum(n.running for n in info.nodes)
    stamp = time.strftime("%H:%M:%S")
    return (
        f"{stamp} {info.name} {info.state}: {info.finished:,}/{info.total:,} done, "
        f"{running:,} running; {count_parts(info)}"
    )


def follow_plain(
    client: Client,
    flow_run_id: str,
    console: Console,
    interval_s: float,
    deadline: float | None,
    *,
    every_s: float = PLAIN_EVERY_S,
) -> FlowRunInfo:
    """Follow a flow run printing a plain progress line when it changed (at most every ``every_s``).

    Raises:
        TimeoutError: ``deadline`` (a ``time.monotonic()`` value) passed first.
    """
    seen: set[tuple[int, str]] = set()
    last, printed_at = "", 0.0
    while True:
        info = client.get(flow_run_id)
        note_reasons(info, seen, console)
        line = progress_line(info)
        now = time.monotonic()
        if info.is_terminal or (line[9:] != last and now - printed_at >= every_s):
            console.print(line, highlight=False, soft_wrap=True)
            last, printed_at = line[9:], now
        if info.is_terminal:
            for n in info.nodes[:MAX_TASK_BARS]:  # where it ended, task by task, as the bars show
                console.print(Text(node_line(n)), highlight=False, soft_wrap=True)
            return info
        if deadline is not None and now >= deadline:
            raise TimeoutError(f"flow run {flow_run_id} did not end in time")
        time.sleep(interval_s)


def node_line(n: TaskCounts) -> str:
    """One task's (node's) final counts: ``"  0 m:f (map): 3/3 done; 3 completed, 0 failed"``."""
    failed = n.failed + n.timed_out
    text = f"  {_bar_label(n)}: {n.finished:,}/{n.total or 0:,} done; {n.completed:,} completed, "
    text += f"{failed:,} failed"
    other = other_counts(n.upstream_failed, n.cancelled)
    return f"{text}, {other}" if other else text


def _totals(info: FlowRunInfo) -> list[int]:
    return [
        info.finished,
        info.total,
        sum(n.running for n in info.nodes),
        info.completed,
        info.failed,
        info.upstream_failed,
        info.cancelled,
    ]


def _fields(row: list[int] | tuple[int, ...]) -> dict[str, Any]:
    finished, total, running, completed, failed, upstream, cancelled = row
    return {
        "completed": finished,
        "total": total or None,
        "running": running,
        "ok": completed,
        "failed": failed,
        "other": other_counts(upstream, cancelled),
    }


def other_counts(upstream_failed: int, cancelled: int) -> str:
    """``"3 upstream failed, 2 cancelled"``, leaving out what is zero ("" if both are)."""
    parts = []
    if upstream_failed:
        parts.append(f"{upstream_failed:,} upstream failed")
    if cancelled:
        parts.append(f"{cancelled:,} cancelled")
    return ", ".join(parts)


def count_parts(info: FlowRunInfo) -> str:
    """``"5 completed, 1 failed, 3 upstream failed, 1 cancelled"`` (the last two when not zero)."""
    text = f"{info.completed:,} completed, {info.failed:,} failed"
    other = other_counts(info.upstream_failed, info.cancelled)
    return f"{text}, {other}" if other else text


def note_reasons(info: FlowRunInfo, seen: set[tuple[int, str]], console: Console) -> None:
    """Print each node's reason for waiting (unschedulable, unknown task) once, when it appears."""
    for n in info.nodes:
        reason = n.unschedulable_reason
        if reason and (n.node, reason) not in seen:
            seen.add((n.node, reason))
            console.print(
                Text(f"waiting: node {n.node} ({n.task_name}) cannot be scheduled: {reason}"),
                style="yellow",
            )


def print_outcome(client: Client, info: FlowRunInfo, console: Console) -> None:
    """One line with the final state and duration, then the first failure (if any)."""
    style = {"COMPLETED": "green", "FAILED": "red"}.get(info.state, "yellow")
    duration = "" if info.duration_s is None else f" in {info.duration_s:.2f} s"
    console.print(
        Text.assemble(
            (f"flow run {info.flow_run_id} ", ""),
            (info.state, f"bold {style}"),
            f"{duration}: {count_parts(info)}",
        )
    )
    error = error_of(client, info)
    if error is not None:
        console.print(Text(f"{error['type']}: {error['message']}", style="bold red"))
        for note in error["notes"]:
            console.print(Text(str(note)), highlight=False)


def error_of(client: Client, info: FlowRunInfo) -> dict[str, Any] | None:
    """The first failure of a FAILED flow run: type, message and remote traceback."""
    if info.state != "FAILED":
        return None
    try:
        client.handle(info.flow_run_id).result(timeout=10.0)
    except (RPCError, FlowRunNotFound):
        raise  # the call failed, not the run
    except (FlowRunFailed, FlowRunCancelled) as exc:
        if getattr(exc, "__notes__", None):  # a task's failure, or the coordinator's words on it
            return _exception_json(exc)
        return {"type": type(exc).__name__, "message": str(exc), "notes": []}
    except Exception as exc:  # noqa: BLE001 - the task's own exception, re-raised here
        # fleetflow's own errors too: a TaskTimeout or MemoryLimitExceeded is
        # the run's failure (before, `inspect` and `watch` showed only its text
        # as their own error and exited).
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
