"""Restore: rebuilding the core's state from what the store holds after a restart.

Owns the stored-row types a store hands back (:class:`RestoredFlow`,
:class:`RestoredTaskRun`) and :meth:`RestoreMixin.restore`, which re-validates
each stored spec, attaches the stored task runs, recomputes everything derived
(per-node counts, terminal and failed flags, pending counts, the idempotency
index), re-queues ready task runs, re-arms retry timers and flow deadlines,
and holds RUNNING ones for their workers to re-attach. See
docs/architecture.md, "Recovery, step by step".
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from fleetflow_coordinator.core.model import (
    FAILED_TASK_STATES,
    TERMINAL_TASK_STATES,
    EventLog,
    EventRecord,
    FlowRun,
    FlowRunState,
    TaskRun,
    TaskRunState,
)
from fleetflow_coordinator.core.spec import NodeSpec, validate_and_link

__all__ = ["RestoreMixin", "RestoredFlow", "RestoredTaskRun"]

#: ``{number: TaskRunState}``: an enum call per stored row costs more than the rest of it.
_STATES = {int(s): s for s in TaskRunState}


@dataclass(slots=True)
class RestoredTaskRun:
    """A task run row as loaded by a store; ``error`` stays opaque."""

    id: int
    node: int
    index: int
    state: int
    attempt: int
    worker_id: str
    leased_at: float
    result: bytes | None
    items: list[bytes] | None
    error: Any
    code_failures: int
    infra_failures: int
    retry_at: float


@dataclass(slots=True)
class RestoredFlow:
    """A flow run as loaded by a store, with its nodes already converted.

    ``node_rows`` is ``{node index: (expanded, failed)}``; ``first_error`` is
    ``(task_name, opaque error or None, message)`` or None.
    """

    id: str
    name: str
    nodes: list[NodeSpec]
    spec_blob: bytes
    state: int
    created_at: float
    ended_at: float
    output_node: int | None
    output_literal: bytes
    idempotency_key: str
    first_error: tuple[str, Any, str] | None
    node_rows: dict[int, tuple[bool, bool]]
    priority: int
    task_runs: list[RestoredTaskRun]
    events: list[EventRecord]
    timeout_s: float = 0.0


class RestoreMixin:
    """Rebuilding the :class:`Scheduler`'s state from stored rows.

    Writes every Scheduler attribute that holds flow state (``flows``,
    ``task_runs``, ``idempotency``, lanes, timers, ``_orphans``,
    ``_flow_deadlines``, ``_next_task_run_id``) and sets ``_orphans_due`` and
    ``_recheck_due``; the stored rows come in as :class:`RestoredFlow`.
    """

    def restore(self, flows: list[RestoredFlow], now: float, next_task_run_id: int = 0) -> None:
        """Rebuild the state from stored rows after a restart (see docs: Recovery).

        Task runs that were RUNNING wait one lease TTL for their workers to
        re-attach (:meth:`register_worker` with ``running``); after that they
        become new attempts. SCHEDULED ones are queued again, and retry delays
        in progress keep their original due time.

        Args:
            flows: What the store holds.
            now: Current time, seconds since the epoch.
            next_task_run_id: The stored next id, so that ids of pruned flow runs
                are never issued again.

        Raises:
            InvalidFlowSpec: a stored spec no longer validates.
        """
        self._next_task_run_id = max(self._next_task_run_id, next_task_run_id)
        for stored in flows:
            self._restore_flow(stored)
        for tr in self._orphans.values():  # a fresh deadline: the restart is not the worker's
            if tr.node.timeout_s > 0:
                self._watch_deadline(tr, now)
        self._orphans_due = now + self.lease_ttl_s
        # Judge queued task runs once workers had one TTL to reconnect; the
        # unschedulable timeout then runs from there.
        self._recheck_due = self._orphans_due
        self._changes = self._empty_changes()

    def _restore_flow(self, stored: RestoredFlow) -> None:
        records = validate_and_link(stored.nodes, stored.output_node)
        flow = FlowRun(stored.id, stored.name, stored.created_at)
        flow.nodes = records
        flow.state = FlowRunState(stored.state)
        flow.ended_at = stored.ended_at
        flow.output_node = stored.output_node
        flow.output_literal = stored.output_literal
        flow.idempotency_key = stored.idempotency_key
        flow.first_error = stored.first_error
        flow.spec_blob = stored.spec_blob
        flow.priority = stored.priority
        flow.events = EventLog(stored.events)
        flow.durable_seq = len(stored.events)
        self.flows[flow.id] = flow
        if flow.idempotency_key:
            self.idempotency[flow.idempotency_key] = flow.id
        for row in sorted(stored.task_runs, key=lambda r: (r.node, r.index)):
            node = records[row.node]
            tr = TaskRun(row.id, flow, node, row.index)
            tr.state = _STATES[row.state]
            tr.attempt = row.attempt
            tr.worker_id = row.worker_id or None
            tr.leased_at = row.leased_at
            tr.result = row.result
            tr.items = row.items
            tr.error = row.error
            tr.code_failures = row.code_failures
            tr.infra_failures = row.infra_failures
            tr.retry_at = row.retry_at
            node.children.append(tr)
            node.counts[tr.state] += 1
            self.task_runs[tr.id] = tr
            self._next_task_run_id = max(self._next_task_run_id, tr.id + 1)
        for index, (expanded, failed) in stored.node_rows.items():
            node = records[index]
            node.expanded = expanded
            if failed and not expanded:
                node.failed = node.terminal = True
        for node in records:
            if node.expanded:
                node.n_terminal = sum(1 for tr in node.children if tr.state in TERMINAL_TASK_STATES)
                node.failed = any(tr.state in FAILED_TASK_STATES for tr in node.children)
                node.terminal = node.n_terminal == len(node.children)
        flow.n_terminal_nodes = sum(1 for node in records if node.terminal)
        # Own failures are exactly those that set first_error; cancellations are
        # told apart so a cancelled flow run ends CANCELLED after a restart too.
        flow.any_failed = flow.first_error is not None
        flow.any_cancelled = flow.state == FlowRunState.CANCELLED or any(
            node.counts[TaskRunState.CANCELLED] for node in records
        )
        flow.cancel_requested = flow.state == FlowRunState.CANCELLED
        if stored.timeout_s > 0 and not flow.terminal:
            self._flow_deadlines.append((flow.created_at + stored.timeout_s, flow))
        for node in records:
            node.whole_pending = sum(
                1 for u in node.whole_deps if not (records[u].terminal and not records[u].failed)
            )
            for tr in node.children:
                tr.pending = sum(
                    1
                    for u in node.item_deps
                    if records[u].children[tr.index].state != TaskRunState.COMPLETED
                )
                if tr.state == TaskRunState.SCHEDULED:
                    self._enqueue(tr)
                    self._work_added = True
                elif tr.state == TaskRunState.AWAITING_RETRY:
                    self._timer_seq += 1
                    heapq.heappush(self._timers, (tr.retry_at, self._timer_seq, tr, tr.attempt))
                elif tr.state == TaskRunState.RUNNING:
                    self._orphans[tr.id] = tr
                    self._take_slots(node, +1)
