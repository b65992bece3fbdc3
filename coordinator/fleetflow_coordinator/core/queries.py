"""Read-only views over the core's state (no changes, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetflow_coordinator.core.model import (
    ArgKind,
    EventKind,
    FlowRun,
    NodeRecord,
    TaskRun,
    TaskRunState,
)

__all__ = [
    "AttemptView",
    "attempt_history",
    "unexpanded_end",
    "node_counts",
    "select_task_runs",
    "input_summary",
    "MAX_INPUT_ITEM_BYTES",
]

#: Largest literal map item :func:`input_summary` hands out as bytes.
MAX_INPUT_ITEM_BYTES = 1024

_ENDINGS = {
    EventKind.TASK_RUN_COMPLETED: "COMPLETED",
    EventKind.TASK_RUN_FAILED: "FAILED",
    EventKind.TASK_RUN_RETRYING: "RETRYING",
    EventKind.TASK_RUN_LEASE_EXPIRED: "LEASE_EXPIRED",
    EventKind.TASK_RUN_TIMED_OUT: "TIMED_OUT",
    EventKind.TASK_RUN_CANCELLED: "CANCELLED",
}


@dataclass(slots=True)
class AttemptView:
    """One attempt of a task run as the event log tells it."""

    attempt: int
    worker_id: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    outcome: str = "RUNNING"
    error: Any = None
    infrastructure: bool = False
    message: str = ""


def attempt_history(tr: TaskRun) -> list[AttemptView]:
    """Every attempt of ``tr``, oldest first, rebuilt from its flow run's event log.

    The log is the single record of attempts (so nothing extra is stored per
    task run); this walks it once, which is fine for an inspect call.
    """
    attempts: dict[int, AttemptView] = {}
    for event in tr.flow.events:
        if event.task_run_id != tr.id:
            continue
        if event.kind == EventKind.TASK_RUN_STARTED:
            attempts[event.attempt] = AttemptView(
                event.attempt, worker_id=event.worker_id, started_at=event.time
            )
            continue
        outcome = _ENDINGS.get(event.kind)
        if outcome is None:
            continue
        view = attempts.get(event.attempt)
        if view is None:  # ended without starting (e.g. cancelled while queued)
            view = attempts[event.attempt] = AttemptView(event.attempt)
        view.ended_at = event.time
        view.outcome = outcome
        view.error = event.error
        view.message = event.message
        view.infrastructure = event.kind == EventKind.TASK_RUN_LEASE_EXPIRED
    return [attempts[k] for k in sorted(attempts)]


def unexpanded_end(flow: FlowRun, node: NodeRecord) -> TaskRunState | None:
    """How a node that ended before it expanded (so it has no task runs) ended.

    UPSTREAM_FAILED when an input node failed or was cancelled (the docs'
    "dependents end UPSTREAM_FAILED"), CANCELLED when the flow run was
    cancelled before it could start, FAILED when it could not expand itself
    (mapped arguments of different lengths). None for any other node.
    """
    if node.expanded or not node.terminal:
        return None
    nodes = flow.nodes
    if any(nodes[u].failed for u in node.whole_deps) or any(
        nodes[u].failed for u in node.item_deps
    ):
        return TaskRunState.UPSTREAM_FAILED
    if flow.cancel_requested or (flow.any_cancelled and not flow.any_failed):
        return TaskRunState.CANCELLED
    return TaskRunState.FAILED


def node_counts(
    flow: FlowRun, node: NodeRecord
) -> tuple[int | None, list[int], TaskRunState | None]:
    """A node's task-run total and counts per state, as views show them.

    Returns:
        ``(total, counts, end)``: ``total`` is None while a map node is not
        expanded; ``counts`` is indexed by TaskRunState value; ``end`` is
        :func:`unexpanded_end`. A plain node that ended unexpanded counts as
        its one task run in that state (total 1), so an upstream failure is
        counted where the docs say it ends.
    """
    end = unexpanded_end(flow, node)
    if end is not None and not node.is_map:
        counts = list(node.counts)
        counts[end] += 1
        return 1, counts, end
    total = len(node.children) if node.expanded else None
    return total, node.counts, end


def select_task_runs(
    flow: FlowRun,
    *,
    states: frozenset[int] = frozenset(),
    task_name: str = "",
    index: int | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[int, list[TaskRun]]:
    """One page of a flow run's task runs, in (node, index) order.

    Args:
        flow: The flow run.
        states: Only these TaskRunState values; empty for all.
        task_name: Only task runs of this task, by its name (``module:qualname``)
            or by the part after the last ``:``; "" for all.
        index: Only the task run with this map index in each node; None for all.
        offset: Matching task runs to skip.
        limit: Task runs to return at most.

    Returns:
        ``(total matching, the page)``. Cost: O(task runs of the matching
        nodes) for a state filter (node counters skip nodes with none), O(nodes)
        for an index search.
    """
    total = 0
    page: list[TaskRun] = []
    end = offset + limit
    for node in flow.nodes:
        if task_name and task_name not in (node.task_name, node.task_name.rpartition(":")[2]):
            continue
        children = node.children
        if index is not None:
            candidates: list[TaskRun] = children[index : index + 1] if index < len(children) else []
        elif states and not any(node.counts[s] for s in states):
            continue
        else:
            candidates = children
        if not states and index is None:
            n = len(candidates)
            lo, hi = max(total, offset) - total, min(total + n, end) - total
            if lo < hi:
                page.extend(candidates[lo:hi])
            total += n
            continue
        for tr in candidates:
            if states and tr.state not in states:
                continue
            if offset <= total < end:
                page.append(tr)
            total += 1
    return total, page


def input_summary(tr: TaskRun) -> tuple[str, bytes]:
    """Where a task run's mapped inputs come from, and the literal item's bytes if small.

    Returns:
        ``("n=item 7 of the literal list", b"...")``; the bytes are the
        pickled item when it is a literal item of at most
        :data:`MAX_INPUT_ITEM_BYTES`, else empty. A plain task run: ``("", b"")``.
    """
    node = tr.node
    if not node.is_map:
        return "", b""
    parts = []
    item = b""
    nodes = tr.flow.nodes
    i = tr.index
    for arg in node.args:
        if not arg.mapped:
            continue
        if arg.kind == ArgKind.LITERAL_ITEMS:
            parts.append(f"{arg.name}=item {i} of the literal list")
            payload = arg.payload[i] if i < len(arg.payload) else b""
            if isinstance(payload, bytes) and len(payload) <= MAX_INPUT_ITEM_BYTES and not item:
                item = payload
        elif arg.kind == ArgKind.NODE:
            up = nodes[arg.payload]
            if up.is_map and i < len(up.children):
                parts.append(
                    f"{arg.name}=result of {up.task_name}[{i}] (task run {up.children[i].id})"
                )
            else:
                parts.append(f"{arg.name}=item {i} of {up.task_name}'s result")
    return ", ".join(parts), item
