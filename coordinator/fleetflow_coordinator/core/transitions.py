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
    N_STATES,
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
from fleetflow_coordinator.core.table import (
    FLOW_ROW_EVENTS,
    FLOW_RUN_TRANSITIONS,
    NODE_ROW_EVENTS,
    PLAIN_EVENTS,
    TASK_RUN_TRANSITIONS,
    FlowStimulus,
    InvalidTransition,
    Stimulus,
)

__all__ = ["TransitionsMixin"]


#: ``_NEXT[stimulus][state]``: ``(next state, event kind)`` or None, the
#: transition table as nested lists for the hot path.
_NEXT: list[list[tuple[TaskRunState, EventKind] | None]] = [
    [None] * N_STATES for _ in range(max(Stimulus) + 1)
]
for (_state, _stimulus), _step in TASK_RUN_TRANSITIONS.items():
    _NEXT[_stimulus][_state] = _step

_RUNNING = FlowRunState.RUNNING
_PENDING = TaskRunState.PENDING
_SCHEDULED = TaskRunState.SCHEDULED
_COMPLETED = TaskRunState.COMPLETED
_SCHEDULED_EVENT = EventKind.TASK_RUN_SCHEDULED
_STARTED_EVENT = EventKind.TASK_RUN_STARTED

#: How many events dropped after their flow run's end are kept for the edge to
#: log between two drains (all are counted).
_AFTER_END_NOTES = 100


class TransitionsMixin:
    """State changes, event emission and graph walks of the :class:`Scheduler`.

    Owns these Scheduler attributes: ``_changes``, ``_changed_flows``,
    ``_work_added``, ``_timers`` and ``_timer_seq`` (retry delays),
    ``_next_task_run_id``, ``_flow_deadlines``, ``_stack`` (the walk),
    ``events_after_end`` and ``_after_end_notes``, and every record's state,
    counts and terminal flags; reads ``uniform`` and ``max_infra_failures``.
    """

    # ------------------------------------------------- the table's two functions

    def _transition(
        self, tr: TaskRun, stimulus: Stimulus, now: float, worker_id: str = "", **fields: Any
    ) -> None:
        """Apply ``stimulus`` to ``tr``: the table gives the next state and its event.

        Raises:
            InvalidTransition: the table has no such edge (a bug in the core).
        """
        state = tr.state
        step = _NEXT[stimulus][state]
        if step is None:
            raise InvalidTransition(f"task run {tr.id}", state, stimulus)
        target, kind = step
        counts = tr.node.counts
        counts[state] -= 1
        counts[target] += 1
        tr.state = target
        if fields or kind not in PLAIN_EVENTS:
            self._emit(tr.flow, kind, now, tr=tr, worker_id=worker_id, **fields)
        else:
            self._emit_plain(tr, kind, now, worker_id)

    def _end_flow(self, flow: FlowRun, stimulus: FlowStimulus, now: float) -> None:
        """End a flow run: the table gives its final state and the event, the last one.

        Raises:
            InvalidTransition: the flow run has ended already (a bug in the core).
        """
        step = FLOW_RUN_TRANSITIONS.get((flow.state, stimulus))
        if step is None:
            raise InvalidTransition(f"flow run {flow.id}", flow.state, stimulus)
        flow.ended_at = now
        self._emit(flow, step[1], now)
        flow.state = step[0]
        self._forget_unschedulable(flow)

    def _emit(
        self,
        flow: FlowRun,
        kind: EventKind,
        now: float,
        *,
        tr: TaskRun | None = None,
        node: NodeRecord | None = None,
        worker_id: str = "",
        run: tuple[int, int] | None = None,
        **fields: Any,
    ) -> None:
        """Append one event (or, with ``run``, an expansion's run of them) to a flow run's log.

        Records what changed for the store as the table (``EVENTS``) says.
        After the flow run's terminal event nothing is appended: such an
        event is counted in ``events_after_end`` and kept for the edge to
        log (:meth:`drain_after_end`).

        Args:
            flow: The flow run whose log grows.
            kind: The event kind.
            now: Current time, seconds since the epoch.
            tr: The task run it is about (fills its id, index and attempt).
            node: The node it is about, when not about one task run.
            worker_id: The worker involved, if any.
            run: ``(first task run id, count)``: the TASK_RUN_SCHEDULED events
                of a map expansion, as one run (the store gets one row).
            **fields: The other ``EventRecord`` fields (message, error...).
        """
        if flow.state != _RUNNING:
            self._after_end(flow, kind, tr, worker_id, fields)
            return
        if tr is not None:
            if not fields and kind in PLAIN_EVENTS:
                self._emit_plain(tr, kind, now, worker_id)
                return
            node = tr.node
            fields.setdefault("task_run_id", tr.id)
            fields.setdefault("index", tr.index)
            fields.setdefault("attempt", tr.attempt)
        if run is not None:
            assert kind == _SCHEDULED_EVENT and node is not None, "runs are expansions"
            first_id, count = run
            first_seq = flow.events.extend_scheduled(
                count, first_id, now, node.index, node.task_name
            )
            self._changed_flows.add(flow.id)
            self._changes.expansions.append((flow, node, first_id, count, first_seq, now))
            return
        if worker_id:
            fields["worker_id"] = worker_id
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
        if kind in FLOW_ROW_EVENTS:
            changes.flows.add(flow)
        if kind in NODE_ROW_EVENTS:
            changes.nodes.add((flow, node))
            changes.task_runs.update(node.children)

    def _emit_plain(self, tr: TaskRun, kind: EventKind, now: float, worker_id: str) -> None:
        """:meth:`_emit`'s direct path for the plain kinds (``EventSpec.plain``).

        TASK_RUN_SCHEDULED, TASK_RUN_STARTED and TASK_RUN_COMPLETED, the three
        every task run goes through, touch no flow or node row: the log gets
        the same event, and the store its row (in ``Changes.event_runs``: runs
        of alike events, as the log keeps them) without a record in between.
        They only follow a transition, which a terminal flow run has none of,
        so the after-the-end check is not needed here.
        """
        flow = tr.flow
        node = tr.node
        index, task_name = node.index, node.task_name
        seq, joined = flow.events.append_plain(
            kind, now, index, task_name, tr.id, tr.index, tr.attempt, worker_id
        )
        flow_id = flow.id
        self._changed_flows.add(flow_id)
        changes = self._changes
        runs = changes.event_runs
        changes.run_events += 1
        if joined and runs:
            # The log found this event alike to the one before it (same kind,
            # time, node, worker and attempt; next task run and index): if that
            # one ends the store's last run, this one extends it.
            last = runs[-1]
            if last[1] + last[2] == seq and last[0] == flow_id:
                last[2] += 1
            else:
                joined = False
        if not joined or not runs:
            runs.append(
                [flow_id, seq, 1, int(kind), now, index, task_name, tr.id, tr.index, tr.attempt]
                + [worker_id]
            )
        if kind != _STARTED_EVENT:
            # A lease changes no stored column that its TASK_RUN_STARTED row
            # does not hold (attempt, worker, time): the task run's row stays
            # as it was (SCHEDULED at this attempt) and a load reads it RUNNING
            # from the event (``store.base.apply_started``). Every way out of
            # RUNNING writes the row.
            changes.task_runs.add(tr)

    def _after_end(
        self,
        flow: FlowRun,
        kind: EventKind,
        tr: TaskRun | None,
        worker_id: str,
        fields: dict[str, Any],
    ) -> None:
        """Count (and keep a few of) the events a finished flow run does not get."""
        counts = self.events_after_end
        counts[kind] = counts.get(kind, 0) + 1
        if len(self._after_end_notes) < _AFTER_END_NOTES:
            self._after_end_notes.append(
                (
                    flow.id,
                    kind.name,
                    tr.id if tr is not None else 0,
                    fields.get("attempt", tr.attempt if tr is not None else 0),
                    worker_id,
                    fields.get("message", ""),
                )
            )

    def has_after_end_notes(self) -> bool:
        """Whether :meth:`drain_after_end` has something to return (cheap)."""
        return bool(self._after_end_notes)

    def drain_after_end(self) -> list[tuple[str, str, int, int, str, str]]:
        """Return and forget what was kept of the events dropped after their flow run's end.

        Returns:
            Up to 100 ``(flow_run_id, kind name, task_run_id, attempt,
            worker_id, message)`` since the last call; ``events_after_end``
            counts all of them by kind, for a metric.
        """
        notes, self._after_end_notes = self._after_end_notes, []
        return notes

    # ------------------------------------------------------------ the graph walk

    def _walk(self, step: Any, *args: Any) -> None:
        """Run ``step(*args)`` and every step it pushes, to the end, without recursion.

        A step that would call further steps pushes them onto ``_stack`` in
        reverse order (what a recursive version would run last goes first),
        so they run depth-first in exactly the recursive order.
        """
        stack = self._stack
        base = len(stack)
        try:
            step(*args)
            while len(stack) > base:
                fn, fn_args = stack.pop()
                fn(*fn_args)
        except BaseException:
            del stack[base:]
            raise

    def _end_failed(
        self, tr: TaskRun, now: float, stimulus: Stimulus, *, message: str = ""
    ) -> None:
        """End a task run in a failed state and propagate to its dependents."""
        self._walk(self._step_end_failed, tr, now, stimulus, message)

    def _fail_node(
        self, flow: FlowRun, node: NodeRecord, now: float, message: str, *, own: bool = False
    ) -> None:
        """A node can never run (fully): fail what is left of it, and its dependents."""
        self._walk(self._step_fail_node, flow, node, now, message, own)

    def _try_expand(self, flow: FlowRun, node: NodeRecord, now: float) -> None:
        """Expand a node whose inputs allow it, and whatever that makes expandable."""
        self._walk(self._step_try_expand, flow, node, now)

    def _check_flow_end(self, flow: FlowRun, now: float) -> None:
        """End the flow run once every node is terminal."""
        if flow.state != _RUNNING or flow.n_terminal_nodes < len(flow.nodes):
            return
        if flow.cancel_requested or (flow.any_cancelled and not flow.any_failed):
            self._end_flow(flow, FlowStimulus.CANCEL, now)
        elif flow.any_failed:
            self._end_flow(flow, FlowStimulus.FAIL, now)
        else:
            self._end_flow(flow, FlowStimulus.COMPLETE, now)

    def _step_end_failed(self, tr: TaskRun, now: float, stimulus: Stimulus, message: str) -> None:
        flow = tr.flow
        node = tr.node
        self._release(tr)
        self._transition(tr, stimulus, now, error=tr.error, message=message)
        node.n_terminal += 1
        node.failed = True
        if stimulus == Stimulus.CANCEL:
            flow.any_cancelled = True
        elif stimulus != Stimulus.UPSTREAM_FAIL:
            flow.any_failed = True
            if flow.first_error is None:
                flow.first_error = (node.task_name, tr.error, message)
        # What the recursive version did, in its order: fail whole consumers,
        # then item consumers' pending children, then check this node's end.
        stack = self._stack
        stack.append((self._step_check_node_end, (flow, node, now)))
        nodes = flow.nodes
        for c in reversed(node.item_consumers):
            stack.append((self._step_fail_pending_child, (nodes[c], tr.index, now)))
        message = f"upstream task {node.task_name} failed"
        for c in reversed(node.whole_consumers):
            stack.append((self._step_fail_node, (flow, nodes[c], now, message, False)))

    def _step_fail_pending_child(self, consumer: NodeRecord, index: int, now: float) -> None:
        if consumer.expanded:
            child = consumer.children[index]
            if child.state == _PENDING:
                self._step_end_failed(child, now, Stimulus.UPSTREAM_FAIL, "")

    def _step_fail_waiting(self, tr: TaskRun, now: float) -> None:
        if tr.state == _PENDING or tr.state == _SCHEDULED:
            self._step_end_failed(tr, now, Stimulus.UPSTREAM_FAIL, "")

    def _step_fail_unless_failed(self, tr: TaskRun, now: float) -> None:
        if tr.state not in FAILED_TASK_STATES:
            self._step_end_failed(tr, now, Stimulus.UPSTREAM_FAIL, "")

    def _step_fail_node(
        self, flow: FlowRun, node: NodeRecord, now: float, message: str, own: bool
    ) -> None:
        if node.terminal:
            return
        stack = self._stack
        if node.expanded:
            for tr in reversed(node.children):
                stack.append((self._step_fail_waiting, (tr, now)))
            return
        node.failed = True
        if own:
            flow.any_failed = True
            if flow.first_error is None:
                flow.first_error = (node.task_name, None, message)
        self._emit(flow, EventKind.NODE_FAILED, now, node=node, message=message)
        node.terminal = True
        flow.n_terminal_nodes += 1
        stack.append((self._check_flow_end, (flow, now)))
        nodes = flow.nodes
        message = f"upstream task {node.task_name} failed"
        for c in reversed(node.whole_consumers + node.item_consumers):
            stack.append((self._step_fail_node, (flow, nodes[c], now, message, False)))

    def _step_check_node_end(self, flow: FlowRun, node: NodeRecord, now: float) -> None:
        if node.terminal or not node.expanded or node.n_terminal < len(node.children):
            return
        node.terminal = True
        flow.n_terminal_nodes += 1
        stack = self._stack
        stack.append((self._check_flow_end, (flow, now)))
        if not node.failed:
            nodes = flow.nodes
            for c in reversed(node.whole_consumers):
                stack.append((self._step_whole_input_done, (flow, nodes[c], now)))

    def _step_whole_input_done(self, flow: FlowRun, consumer: NodeRecord, now: float) -> None:
        consumer.whole_pending -= 1
        self._step_try_expand(flow, consumer, now)

    def _step_try_expand(self, flow: FlowRun, node: NodeRecord, now: float) -> None:
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
                message = f"mapped arguments differ in length: {lengths}"
                self._step_fail_node(flow, node, now, message, True)
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
            node.counts[_PENDING] += 1
        self._emit(flow, EventKind.NODE_EXPANDED, now, node=node, count=n)
        upstream_failed = []
        for tr in children:
            pending = 0
            blocked = False
            for u in node.item_deps:
                state = nodes[u].children[tr.index].state
                if state != _COMPLETED:
                    pending += 1
                    if state in FAILED_TASK_STATES:
                        blocked = True
            tr.pending = pending
            if blocked:
                upstream_failed.append(tr)
            elif pending == 0:
                self._schedule(tr, now, Stimulus.INPUTS_READY)
        stack = self._stack
        stack.append((self._step_check_node_end, (flow, node, now)))
        for consumer in reversed(node.item_consumers):
            stack.append((self._step_try_expand, (flow, nodes[consumer], now)))
        for tr in reversed(upstream_failed):
            stack.append((self._step_fail_unless_failed, (tr, now)))

    def _expand_scheduled(self, flow: FlowRun, node: NodeRecord, n: int, now: float) -> None:
        """Expand a node with no item dependencies: every child SCHEDULED at once.

        The same task runs, events and ready lane as one :meth:`_schedule` per
        child (the table's PENDING --INPUTS_READY--> SCHEDULED edge), built in
        one pass; the store gets one expansion row for them (:class:`Changes`
        ``expansions``) instead of a row and an event each. A step of a walk:
        what it makes expandable is pushed, not called.
        """
        node.expanded = True
        self._emit(flow, EventKind.NODE_EXPANDED, now, node=node, count=n)
        first_id = self._next_task_run_id
        self._next_task_run_id += n
        index, task_name = node.index, node.task_name
        task_runs = self.task_runs
        children = node.children
        for i in range(n):
            tr = TaskRun(first_id + i, flow, node, i)
            tr.state = _SCHEDULED
            task_runs[tr.id] = tr
            children.append(tr)
        node.counts[_SCHEDULED] += n
        if n:
            self._emit(flow, _SCHEDULED_EVENT, now, node=node, run=(first_id, n))
            by_node = self.ready.get(task_name)
            if by_node is None:
                by_node = self.ready[task_name] = {}
            lane = by_node.get((flow.id, index))
            if lane is None:
                lane = by_node[(flow.id, index)] = Lane(flow, node)
            lane.queue.extend(children)
            self._work_added = True
            if not node.unschedulable_reported and not self._fits_now(node):
                reason = self._unschedulable_reason(node)
                self._report_unschedulable(flow, node, now, reason, children[0])
        stack = self._stack
        stack.append((self._step_check_node_end, (flow, node, now)))
        nodes = flow.nodes
        for consumer in reversed(node.item_consumers):
            stack.append((self._step_try_expand, (flow, nodes[consumer], now)))

    # ------------------------------------------------------------ task run paths

    def _schedule(self, tr: TaskRun, now: float, stimulus: Stimulus) -> None:
        """Queue ``tr`` (inputs ready, retry due, or a new attempt after a lost one)."""
        node = tr.node
        self._transition(tr, stimulus, now)
        self._enqueue(tr)
        self._work_added = True
        if not node.unschedulable_reported and node.fits_version != self._fleet_version:
            reason = self._unschedulable_reason(node)
            if reason:
                self._report_unschedulable(tr.flow, node, now, reason, tr)
            else:
                node.fits_version = self._fleet_version

    def _lose_attempt(self, tr: TaskRun, now: float, reason: str) -> None:
        self._release(tr)
        self._emit(tr.flow, EventKind.TASK_RUN_LEASE_EXPIRED, now, tr=tr, message=reason)
        self._infra_failure(tr, now, None, reason)

    def _infra_failure(self, tr: TaskRun, now: float, error: Any, reason: str) -> None:
        tr.infra_failures += 1
        if error is not None:  # reported by the worker (e.g. the task process died)
            tr.error = error
            self._emit(
                tr.flow, EventKind.TASK_RUN_LEASE_EXPIRED, now, tr=tr, error=error, message=reason
            )
        if tr.infra_failures >= self.max_infra_failures:
            message = f"{reason}; gave up after {tr.infra_failures} infrastructure failures"
            self._end_failed(tr, now, Stimulus.FAIL, message=message)
            return
        tr.attempt += 1
        self._schedule(tr, now, Stimulus.REQUEUE)

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
            self._transition(
                tr, Stimulus.RETRY, now, error=error, message=message, retry_at=tr.retry_at
            )
            tr.attempt += 1
            self._timer_seq += 1
            heapq.heappush(self._timers, (tr.retry_at, self._timer_seq, tr, tr.attempt))
            return
        stimulus = Stimulus.TIME_OUT if timed_out else Stimulus.FAIL
        self._end_failed(tr, now, stimulus, message=message)

    def _complete(self, tr: TaskRun, now: float) -> None:
        flow = tr.flow
        node = tr.node
        self._transition(tr, Stimulus.SUCCEED, now)
        node.n_terminal += 1
        nodes = flow.nodes
        for c in node.item_consumers:
            consumer = nodes[c]
            if consumer.expanded:
                child = consumer.children[tr.index]
                child.pending -= 1
                if child.pending == 0 and child.state == _PENDING:
                    self._schedule(child, now, Stimulus.INPUTS_READY)
        if node.n_terminal >= len(node.children) and not node.terminal:
            self._walk(self._step_check_node_end, flow, node, now)

    # ------------------------------------------------------ cancellation, timeouts

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
                self._end_failed(tr, now, Stimulus.CANCEL, message="cancelled")
                cancelled += 1
        return cancelled
