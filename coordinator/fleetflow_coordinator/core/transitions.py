"""Transitions: every change of a task run's or flow run's state, and the events that record it.

Owns setting task run states (keeping per-node counts), appending events to a
flow run's log and recording what changed for the store (:class:`Changes`),
node expansion (including the one-pass expansion of a map whose children are
all ready at once), completion, code and infrastructure failures with their
retries, failure propagation to dependents (``UPSTREAM_FAILED``), node and
flow run endings, cancellation of nodes and flow run timeouts. See
docs/architecture.md, "State machine".
"""

from __future__ import annotations

import heapq
from typing import Any

from fleetflow_coordinator.core.model import (
    FAILED_TASK_STATES,
    TERMINAL_TASK_STATES,
    ArgKind,
    EventKind,
    EventRecord,
    FlowRun,
    FlowRunState,
    NodeRecord,
    TaskRun,
    TaskRunState,
)
from fleetflow_coordinator.core.placement import Lane
from fleetflow_coordinator.core.retry import retry_delay

__all__ = ["TransitionsMixin"]

#: The event that records each failed ending.
_END_EVENTS = {
    TaskRunState.FAILED: EventKind.TASK_RUN_FAILED,
    TaskRunState.TIMED_OUT: EventKind.TASK_RUN_TIMED_OUT,
    TaskRunState.CANCELLED: EventKind.TASK_RUN_CANCELLED,
    TaskRunState.UPSTREAM_FAILED: EventKind.TASK_RUN_UPSTREAM_FAILED,
}

#: Events after which the flow run's own row changes (state, end, first error).
_FLOW_ROW_EVENTS = frozenset(
    {
        EventKind.FLOW_RUN_SUBMITTED,
        EventKind.FLOW_RUN_COMPLETED,
        EventKind.FLOW_RUN_FAILED,
        EventKind.FLOW_RUN_CANCELLED,
        EventKind.TASK_RUN_FAILED,
        EventKind.TASK_RUN_TIMED_OUT,
        EventKind.NODE_FAILED,
    }
)


class TransitionsMixin:
    """State changes and event emission of the :class:`Scheduler`.

    Owns these Scheduler attributes: ``_changes``, ``_changed_flows``,
    ``_work_added``, ``_timers`` and ``_timer_seq`` (retry delays),
    ``_next_task_run_id``, ``_flow_deadlines``, ``_attempt_deadlines``,
    ``_deadlines_compact_at`` and ``attempts_expired`` (attempt deadlines), and
    every record's state, counts and terminal flags; reads ``uniform``,
    ``attempt_grace_s`` and ``max_infra_failures``.
    """

    def _expire_flows(self, now: float) -> None:
        """End flow runs past their timeout: cancel what is left, then end FAILED."""
        keep = []
        for deadline, flow in self._flow_deadlines:
            if flow.terminal:
                continue
            if now < deadline:
                keep.append((deadline, flow))
                continue
            timeout = deadline - flow.created_at
            flow.any_failed = True
            if flow.first_error is None:
                flow.first_error = ("", None, f"flow run timed out after {timeout:g} s")
            for node in flow.nodes:
                self._cancel_node(flow, node, now)
        self._flow_deadlines = keep

    def _watch_deadline(self, tr: TaskRun, now: float, position: int = 1) -> None:
        """Expire ``tr``'s current attempt if no outcome came by its deadline.

        The deadline is ``now + position * timeout + attempt_grace_s``:
        ``position`` is the attempt's place in its batch (1 for the first),
        since a batch's members run one after another in one slot.
        """
        deadline = now + position * tr.node.timeout_s + self.attempt_grace_s
        self._timer_seq += 1
        heap = self._attempt_deadlines
        heapq.heappush(heap, (deadline, self._timer_seq, tr, tr.attempt))
        if len(heap) > self._deadlines_compact_at:
            # Entries of attempts that ended wait for their deadline to be
            # dropped; at high rates that is many: keep only current ones.
            heap[:] = [
                e for e in heap if e[2].state == TaskRunState.RUNNING and e[2].attempt == e[3]
            ]
            heapq.heapify(heap)
            self._deadlines_compact_at = max(4096, 2 * len(heap))

    def _expire_attempts(self, now: float) -> None:
        """Expire running attempts past their timeout plus the grace (issue #12 item 4).

        The worker should have stopped the attempt at its timeout and reported
        it; it did not, although it may still be heartbeating. That is the
        worker's failure, not the task code's: the attempt ends like a lost
        lease (an infrastructure failure, re-queued as a new attempt), and the
        worker's next heartbeat is told to cancel it.
        """
        heap = self._attempt_deadlines
        while heap and heap[0][0] <= now:
            _, _, tr, attempt = heapq.heappop(heap)
            if tr.state != TaskRunState.RUNNING or tr.attempt != attempt:
                continue  # it ended in time
            self.attempts_expired += 1
            self._lose_attempt(
                tr,
                now,
                f"worker {tr.worker_id} sent no outcome within the timeout of "
                f"{tr.node.timeout_s:g} s plus {self.attempt_grace_s:g} s: "
                "expired by the coordinator",
            )

    def _cancel_node(self, flow: FlowRun, node: NodeRecord, now: float) -> int:
        if node.terminal:
            return 0
        if not node.expanded:
            flow.any_cancelled = True
            self._fail_node(flow, node, now, "cancelled before it started")
            return 0
        cancelled = 0
        for tr in node.children:
            if tr.state not in TERMINAL_TASK_STATES:
                self._end_failed(tr, now, TaskRunState.CANCELLED, message="cancelled")
                cancelled += 1
        return cancelled

    def _event(
        self,
        flow: FlowRun,
        kind: EventKind,
        now: float,
        *,
        tr: TaskRun | None = None,
        node: NodeRecord | None = None,
        **fields: Any,
    ) -> None:
        if tr is not None:
            node = tr.node
            fields.setdefault("task_run_id", tr.id)
            fields.setdefault("index", tr.index)
            fields.setdefault("attempt", tr.attempt)
        if node is not None:
            fields["node"] = node.index
            fields["task_name"] = node.task_name
        event = EventRecord(len(flow.events) + 1, kind, now, **fields)
        flow.events.append(event)
        self._changed_flows.add(flow.id)
        changes = self._changes
        changes.events.append((flow.id, event))
        if tr is not None:
            changes.task_runs.add(tr)
        if kind in _FLOW_ROW_EVENTS:
            changes.flows.add(flow)
        if kind == EventKind.NODE_EXPANDED or kind == EventKind.NODE_FAILED:
            changes.nodes.add((flow, node))
            changes.task_runs.update(node.children)

    def _task_event(self, tr: TaskRun, kind: EventKind, now: float, worker_id: str = "") -> None:
        """:meth:`_event` for the per-task-run kinds that touch no flow or node row.

        Only TASK_RUN_SCHEDULED, TASK_RUN_STARTED and TASK_RUN_COMPLETED, the
        three every task run goes through: the log gets the same event, and
        the store its row (``Changes.event_rows``) without a record in between.
        """
        flow = tr.flow
        node = tr.node
        index, task_name = node.index, node.task_name
        seq = flow.events.append_plain(
            kind, now, index, task_name, tr.id, tr.index, tr.attempt, worker_id
        )
        self._changed_flows.add(flow.id)
        changes = self._changes
        changes.event_rows.append(
            (
                flow.id,
                seq,
                int(kind),
                now,
                index,
                task_name,
                tr.id,
                tr.index,
                tr.attempt,
                worker_id,
                0,
                "",
                None,
                0.0,
            )
        )
        changes.task_runs.add(tr)

    def _set_state(self, tr: TaskRun, state: TaskRunState) -> None:
        counts = tr.node.counts
        counts[tr.state] -= 1
        counts[state] += 1
        tr.state = state

    def _try_expand(self, flow: FlowRun, node: NodeRecord, now: float) -> None:
        if node.expanded or node.terminal or node.whole_pending:
            return
        nodes = flow.nodes
        if any(not nodes[u].expanded for u in node.item_deps):
            return
        n = 1
        if node.is_map:
            lengths: dict[str, int] = {}
            for arg in node.args:
                if not arg.mapped:
                    continue
                if arg.kind == ArgKind.LITERAL_ITEMS:
                    lengths[arg.name] = len(arg.payload)
                else:
                    upstream = nodes[arg.payload]
                    if upstream.is_map:
                        lengths[arg.name] = len(upstream.children)
                    else:
                        lengths[arg.name] = len(upstream.children[0].items or ())
            if len(set(lengths.values())) > 1:
                self._fail_node(
                    flow, node, now, f"mapped arguments differ in length: {lengths}", own=True
                )
                return
            n = next(iter(lengths.values()))
        if not node.item_deps:
            self._expand_scheduled(flow, node, n, now)
            return
        node.expanded = True
        children = node.children
        for i in range(n):
            tr = TaskRun(self._next_task_run_id, flow, node, i)
            self._next_task_run_id += 1
            self.task_runs[tr.id] = tr
            children.append(tr)
            node.counts[TaskRunState.PENDING] += 1
        self._event(flow, EventKind.NODE_EXPANDED, now, node=node, count=n)
        upstream_failed = []
        for tr in children:
            pending = 0
            blocked = False
            for u in node.item_deps:
                state = nodes[u].children[tr.index].state
                if state != TaskRunState.COMPLETED:
                    pending += 1
                    if state in FAILED_TASK_STATES:
                        blocked = True
            tr.pending = pending
            if blocked:
                upstream_failed.append(tr)
            elif pending == 0:
                self._schedule(tr, now)
        for tr in upstream_failed:
            if tr.state not in FAILED_TASK_STATES:
                self._end_failed(tr, now, TaskRunState.UPSTREAM_FAILED)
        for consumer in node.item_consumers:
            self._try_expand(flow, nodes[consumer], now)
        self._check_node_end(flow, node, now)

    def _expand_scheduled(self, flow: FlowRun, node: NodeRecord, n: int, now: float) -> None:
        """Expand a node with no item dependencies: every child SCHEDULED at once.

        The same task runs, events and ready lane as one :meth:`_schedule` per
        child, built in one pass; the store gets one expansion row for them
        (:class:`Changes` ``expansions``) instead of a row and an event each.
        """
        node.expanded = True
        self._event(flow, EventKind.NODE_EXPANDED, now, node=node, count=n)
        first_id = self._next_task_run_id
        self._next_task_run_id += n
        index, task_name = node.index, node.task_name
        first_seq = flow.events.extend_scheduled(n, first_id, now, index, task_name)
        task_runs = self.task_runs
        children = node.children
        scheduled = TaskRunState.SCHEDULED
        for i in range(n):
            tr = TaskRun(first_id + i, flow, node, i)
            tr.state = scheduled
            task_runs[tr.id] = tr
            children.append(tr)
        node.counts[scheduled] += n
        if n:
            by_node = self.ready.get(task_name)
            if by_node is None:
                by_node = self.ready[task_name] = {}
            lane = by_node.get((flow.id, index))
            if lane is None:
                lane = by_node[(flow.id, index)] = Lane(flow, node)
            lane.queue.extend(children)
            self._work_added = True
            self._changed_flows.add(flow.id)
            self._changes.expansions.append((flow, node, first_id, n, first_seq, now))
            if not node.unschedulable_reported and not self._fits_now(node):
                reason = self._unschedulable_reason(node)
                self._report_unschedulable(flow, node, now, reason, children[0])
        for consumer in node.item_consumers:
            self._try_expand(flow, flow.nodes[consumer], now)
        self._check_node_end(flow, node, now)

    def _schedule(self, tr: TaskRun, now: float) -> None:
        node = tr.node
        self._set_state(tr, TaskRunState.SCHEDULED)
        self._enqueue(tr)
        self._work_added = True
        self._task_event(tr, EventKind.TASK_RUN_SCHEDULED, now)
        if not node.unschedulable_reported and node.fits_version != self._fleet_version:
            reason = self._unschedulable_reason(node)
            if reason:
                self._report_unschedulable(tr.flow, node, now, reason, tr)
            else:
                node.fits_version = self._fleet_version

    def _lose_attempt(self, tr: TaskRun, now: float, reason: str) -> None:
        self._release(tr)
        self._event(tr.flow, EventKind.TASK_RUN_LEASE_EXPIRED, now, tr=tr, message=reason)
        self._infra_failure(tr, now, None, reason)

    def _infra_failure(self, tr: TaskRun, now: float, error: Any, reason: str) -> None:
        tr.infra_failures += 1
        if error is not None:  # reported by the worker (e.g. the task process died)
            tr.error = error
            self._event(
                tr.flow, EventKind.TASK_RUN_LEASE_EXPIRED, now, tr=tr, error=error, message=reason
            )
        if tr.infra_failures >= self.max_infra_failures:
            message = f"{reason}; gave up after {tr.infra_failures} infrastructure failures"
            self._end_failed(tr, now, TaskRunState.FAILED, message=message)
            return
        tr.attempt += 1
        self._schedule(tr, now)

    def _code_failure(
        self,
        tr: TaskRun,
        now: float,
        error: Any,
        message: str = "",
        *,
        timed_out: bool = False,
        non_retryable: bool = False,
        requested_delay_s: float | None = None,
    ) -> None:
        tr.code_failures += 1
        tr.error = error
        node = tr.node
        if timed_out and not message and error is None:
            message = f"timed out after {node.timeout_s:g} s"
        if not non_retryable and tr.code_failures <= node.retries:
            delay = retry_delay(node.policy, tr.code_failures, self.uniform, requested_delay_s)
            tr.retry_at = now + delay
            self._set_state(tr, TaskRunState.AWAITING_RETRY)
            self._event(
                tr.flow,
                EventKind.TASK_RUN_RETRYING,
                now,
                tr=tr,
                error=error,
                message=message,
                retry_at=tr.retry_at,
            )
            tr.attempt += 1
            self._timer_seq += 1
            heapq.heappush(self._timers, (tr.retry_at, self._timer_seq, tr, tr.attempt))
            return
        state = TaskRunState.TIMED_OUT if timed_out else TaskRunState.FAILED
        self._end_failed(tr, now, state, message=message)

    def _complete(self, tr: TaskRun, now: float) -> None:
        flow = tr.flow
        node = tr.node
        self._set_state(tr, TaskRunState.COMPLETED)
        node.n_terminal += 1
        self._task_event(tr, EventKind.TASK_RUN_COMPLETED, now)
        nodes = flow.nodes
        for c in node.item_consumers:
            consumer = nodes[c]
            if consumer.expanded:
                child = consumer.children[tr.index]
                child.pending -= 1
                if child.pending == 0 and child.state == TaskRunState.PENDING:
                    self._schedule(child, now)
        self._check_node_end(flow, node, now)

    def _end_failed(
        self, tr: TaskRun, now: float, state: TaskRunState, *, message: str = ""
    ) -> None:
        """End a task run in a failed state and propagate to its dependents."""
        flow = tr.flow
        node = tr.node
        self._release(tr)
        self._set_state(tr, state)
        node.n_terminal += 1
        node.failed = True
        kind = _END_EVENTS[state]
        if state == TaskRunState.CANCELLED:
            flow.any_cancelled = True
        elif state != TaskRunState.UPSTREAM_FAILED:
            flow.any_failed = True
            if flow.first_error is None:
                flow.first_error = (node.task_name, tr.error, message)
        self._event(flow, kind, now, tr=tr, error=tr.error, message=message)
        nodes = flow.nodes
        for c in node.whole_consumers:
            self._fail_node(flow, nodes[c], now, f"upstream task {node.task_name} failed")
        for c in node.item_consumers:
            consumer = nodes[c]
            if consumer.expanded:
                child = consumer.children[tr.index]
                if child.state == TaskRunState.PENDING:
                    self._end_failed(child, now, TaskRunState.UPSTREAM_FAILED)
        self._check_node_end(flow, node, now)

    def _fail_node(
        self, flow: FlowRun, node: NodeRecord, now: float, message: str, *, own: bool = False
    ) -> None:
        """A node can never run (fully): fail what is left of it."""
        if node.terminal:
            return
        if node.expanded:
            for tr in node.children:
                if tr.state == TaskRunState.PENDING or tr.state == TaskRunState.SCHEDULED:
                    self._end_failed(tr, now, TaskRunState.UPSTREAM_FAILED)
            return
        node.failed = True
        if own:
            flow.any_failed = True
            if flow.first_error is None:
                flow.first_error = (node.task_name, None, message)
        self._event(flow, EventKind.NODE_FAILED, now, node=node, message=message)
        node.terminal = True
        flow.n_terminal_nodes += 1
        for c in node.whole_consumers + node.item_consumers:
            self._fail_node(flow, flow.nodes[c], now, f"upstream task {node.task_name} failed")
        self._check_flow_end(flow, now)

    def _check_node_end(self, flow: FlowRun, node: NodeRecord, now: float) -> None:
        if node.terminal or not node.expanded or node.n_terminal < len(node.children):
            return
        node.terminal = True
        flow.n_terminal_nodes += 1
        if not node.failed:
            for c in node.whole_consumers:
                consumer = flow.nodes[c]
                consumer.whole_pending -= 1
                self._try_expand(flow, consumer, now)
        self._check_flow_end(flow, now)

    def _check_flow_end(self, flow: FlowRun, now: float) -> None:
        if flow.terminal or flow.n_terminal_nodes < len(flow.nodes):
            return
        flow.ended_at = now
        if flow.cancel_requested or (flow.any_cancelled and not flow.any_failed):
            flow.state = FlowRunState.CANCELLED
            self._event(flow, EventKind.FLOW_RUN_CANCELLED, now)
        elif flow.any_failed:
            flow.state = FlowRunState.FAILED
            self._event(flow, EventKind.FLOW_RUN_FAILED, now)
        else:
            flow.state = FlowRunState.COMPLETED
            self._event(flow, EventKind.FLOW_RUN_COMPLETED, now)
