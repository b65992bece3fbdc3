"""The scheduling core: a pure state machine over flow runs, task runs and workers.

Every entry point takes the current time as an argument and returns plain
values; nothing here reads a clock, sleeps, awaits or touches a socket, so the
core can be driven by tests at many thousands of events per second.

The edge (``runtime.py``) calls these methods from the event loop and then
drains two outputs: :meth:`Scheduler.drain_changed_flows` (flow runs whose
event log grew, to wake watchers) and :meth:`Scheduler.drain_work_added`
(task runs became ready, to wake long-polling workers).

This module owns the :class:`Scheduler` itself: its state (every attribute is
declared and documented in ``__init__``), the changes drained by the store,
and the entry points that are not one concern's alone (submit, report, tick,
cancel, prune). The concerns live in their own modules, each a mixin the
Scheduler is composed from (see docs/architecture.md, "Module map"):
``spec`` (validation and linking), ``placement`` (lanes, leasing, batches,
reservations, slots), ``unschedulable`` (unschedulable bookkeeping and
demand), ``workers`` (membership and liveness), ``restore`` and
``transitions`` (state changes and events).

See docs/architecture.md, "State machine", for the transitions.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from fleetflow_coordinator.core.invariants import InvalidState, InvariantsMixin
from fleetflow_coordinator.core.messages import Ack, Changes, LeaseGrant, Outcome
from fleetflow_coordinator.core.model import (
    TERMINAL_TASK_STATES,
    EventKind,
    FlowRun,
    FlowRunState,
    NodeRecord,
    TaskRun,
    TaskRunState,
    WorkerRecord,
)
from fleetflow_coordinator.core.placement import (
    BATCH_TARGET_S,
    LEASING_WINDOW_S,
    MAX_BATCH,
    MAX_LEASES_PER_WORKER,
    MAX_OVERTAKES,
    Lane,
    PlacementMixin,
    whole_value,
)
from fleetflow_coordinator.core.restore import RestoredFlow, RestoredTaskRun, RestoreMixin
from fleetflow_coordinator.core.spec import InvalidFlowSpec, NodeSpec, validate_and_link
from fleetflow_coordinator.core.table import InvalidTransition, Stimulus
from fleetflow_coordinator.core.transitions import TransitionsMixin
from fleetflow_coordinator.core.unschedulable import UnschedulableMixin
from fleetflow_coordinator.core.workers import WorkersMixin

#: Weight of the newest duration in a node's moving average (sizes batches).
_DURATION_WEIGHT = 0.2

__all__ = [
    "Scheduler",
    "NodeSpec",
    "InvalidFlowSpec",
    "InvalidTransition",
    "InvalidState",
    "LeaseGrant",
    "Outcome",
    "Ack",
    "Changes",
    "RestoredFlow",
    "RestoredTaskRun",
    "BATCH_TARGET_S",
    "LEASING_WINDOW_S",
    "MAX_BATCH",
    "MAX_LEASES_PER_WORKER",
    "MAX_OVERTAKES",
    "whole_value",
]


class Scheduler(
    TransitionsMixin,
    PlacementMixin,
    UnschedulableMixin,
    WorkersMixin,
    RestoreMixin,
    InvariantsMixin,
):
    """Holds all flow state and decides every transition.

    Args:
        lease_ttl_s: A worker silent this long (seconds) loses its leases.
        max_infra_failures: Attempts of one task run that may end through the
            infrastructure (worker lost, task process died) before the task
            run fails; separate from the task's own ``retries``.
        max_leases_per_worker: The most slots (allocations of running
            attempts; a batch holds one) one worker holds at once, whatever
            the attempts request (:data:`MAX_LEASES_PER_WORKER`).
    """

    def __init__(
        self,
        *,
        lease_ttl_s: float = 10.0,
        max_infra_failures: int = 3,
        max_result_bytes: int = 1 << 20,
        uniform: Callable[[], float] = lambda: 0.5,
        concurrency_limits: dict[str, int] | None = None,
        unschedulable_timeout_s: float = 300.0,
        attempt_grace_s: float | None = None,
        max_leases_per_worker: int = MAX_LEASES_PER_WORKER,
    ) -> None:
        self.lease_ttl_s = lease_ttl_s
        #: An attempt with a timeout that has no outcome this long after its
        #: timeout is expired by the coordinator (default: twice the lease TTL).
        self.attempt_grace_s = 2 * lease_ttl_s if attempt_grace_s is None else attempt_grace_s
        #: heap of (deadline, tie-breaker, TaskRun, attempt) of running attempts
        #: that have a timeout (see PlacementMixin._expire_attempts)
        self._attempt_deadlines: list[tuple[float, int, TaskRun, int]] = []
        self._deadlines_compact_at = 4096
        #: Attempts expired that way, in total (a metric).
        self.attempts_expired = 0
        #: The most slots one worker holds at once (:data:`MAX_LEASES_PER_WORKER`).
        self.max_leases_per_worker = max_leases_per_worker
        self.max_infra_failures = max_infra_failures
        self.max_result_bytes = max_result_bytes
        #: Returns a float in [0, 1) for retry jitter; injected (no random here).
        self.uniform = uniform
        #: A task run that no connected worker could ever run fails after this
        #: many seconds (0: never).
        self.unschedulable_timeout_s = unschedulable_timeout_s
        #: {(flow_run_id, node index): (flow, node, since, reason)} nodes reported
        #: unschedulable; only of running flow runs (dropped when one ends).
        self._unschedulable: dict[tuple[str, int], tuple[FlowRun, NodeRecord, float, str]] = {}
        #: {worker_id: Lane} workers being cleared for a starving large request
        self._reservations: dict[str, Lane] = {}
        #: {tag: limit} named concurrency limits
        self.limits: dict[str, int] = dict(concurrency_limits or {})
        #: {("tag", name) | ("task", task_name): task runs holding a slot}
        self.slots_held: dict[tuple[str, str], int] = {}
        self._rr = 0
        #: {flow_run_id: FlowRun}
        self.flows: dict[str, FlowRun] = {}
        #: {task_run_id: TaskRun}
        self.task_runs: dict[int, TaskRun] = {}
        #: {worker_id: WorkerRecord}
        self.workers: dict[str, WorkerRecord] = {}
        #: {task_name: {(flow_run_id, node index): Lane}}: one FIFO lane per
        #: node, so that flow runs take turns (fairness); entries go stale when
        #: a task run leaves SCHEDULED and are skipped when popped.
        self.ready: dict[str, dict[tuple[str, int], Lane]] = {}
        #: heap of (due time, tie-breaker, TaskRun, attempt) for retry delays
        self._timers: list[tuple[float, int, TaskRun, int]] = []
        self._timer_seq = 0
        self._batch_seq = 0
        #: Grows whenever a worker registers or is lost (what fits may change).
        self._fleet_version = 0
        #: Per lease() call: the batch limit and the slots granted so far.
        self._max_batch = 1
        self._slots = 0
        #: Workers that asked for leases within LEASING_WINDOW_S, counted at
        #: _leasing_at (recounted at most twice a second).
        self._leasing = 0
        self._leasing_at = -math.inf
        #: {idempotency_key: flow_run_id}
        self.idempotency: dict[str, str] = {}
        self._next_task_run_id = 1
        self._changed_flows: set[str] = set()
        self._work_added = False
        #: Task runs that were RUNNING when the state was restored, waiting for
        #: their worker to re-attach: {task_run_id: TaskRun}, until _orphans_due.
        self._orphans: dict[int, TaskRun] = {}
        self._orphans_due = 0.0
        self._recheck_due = 0.0
        #: [(deadline, FlowRun)] of flow runs with a timeout (few; scanned per tick)
        self._flow_deadlines: list[tuple[float, FlowRun]] = []
        #: Ids of task runs whose next attempt is leased alone, never in a batch:
        #: members of a lease batch lost with its worker (see lose_worker).
        self._lease_alone: set[int] = set()
        self._changes = self._empty_changes()
        #: Steps of the graph walk in progress (see TransitionsMixin._walk).
        self._stack: list[tuple[Callable[..., None], tuple]] = []
        #: {EventKind: count} of events not appended because their flow run had
        #: ended (late results on finished runs...), for the edge's metric.
        self.events_after_end: dict[EventKind, int] = {}
        self._after_end_notes: list[tuple[str, str, int, int, str, str]] = []

    @staticmethod
    def _empty_changes() -> Changes:
        return Changes([], set(), set(), set(), [], [])

    def drain_changes(self) -> Changes:
        """Return and forget everything that changed, for the store."""
        changes, self._changes = self._changes, self._empty_changes()
        changes.next_task_run_id = self._next_task_run_id
        return changes

    def has_changes(self) -> bool:
        """Whether anything changed since the last :meth:`drain_changes`."""
        return bool(self._changes)

    def pending_changes(self) -> int:
        """How many rows the next :meth:`drain_changes` would return (a batch size hint)."""
        return len(self._changes)

    # ------------------------------------------------------------------ outputs

    def drain_changed_flows(self) -> set[str]:
        """Return and forget the ids of flow runs whose event log grew."""
        changed, self._changed_flows = self._changed_flows, set()
        return changed

    def drain_work_added(self) -> bool:
        """Return whether task runs became ready since the last call."""
        added, self._work_added = self._work_added, False
        return added

    # ---------------------------------------------------------------- submission

    def submit(
        self,
        flow_run_id: str,
        name: str,
        nodes: list[NodeSpec],
        now: float,
        *,
        output_node: int | None = None,
        output_literal: bytes = b"",
        idempotency_key: str = "",
        spec_blob: bytes = b"",
        priority: int = 0,
        timeout_s: float = 0.0,
    ) -> tuple[FlowRun, bool]:
        """Accept a flow run whole, or reject it whole.

        Args:
            flow_run_id: New unique id chosen by the edge.
            name: Display name.
            nodes: Nodes in topological order (a node refers only to lower indexes).
            now: Current time, seconds since the epoch.
            output_node: Node whose result is the flow's result, if any.
            output_literal: Pickled constant result when ``output_node`` is None.
            idempotency_key: Optional; a known key returns the existing run
                (whatever its state, a cancelled one too), when it is a run
                of the flow named ``name``.
            spec_blob: The spec as received (opaque), kept for the store.
            priority: Higher is leased first among ready task runs that fit.
            timeout_s: The flow run's time limit in seconds (0: none).

        Returns:
            ``(flow_run, created)``; ``created`` is False for a known key.

        Raises:
            InvalidFlowSpec: a rule is broken, or ``idempotency_key`` names a
                run of another flow; nothing was accepted.
        """
        if idempotency_key and idempotency_key in self.idempotency:
            known = self.flows[self.idempotency[idempotency_key]]
            if known.name != name:
                raise InvalidFlowSpec(
                    f"idempotency_key {idempotency_key!r}: already names flow run {known.id} of "
                    f"flow {known.name!r}; a run of another flow needs another key"
                )
            return known, False
        if not (math.isfinite(timeout_s) and timeout_s >= 0):
            raise InvalidFlowSpec(f"timeout_seconds = {timeout_s}: must be finite and >= 0")
        records = validate_and_link(nodes, output_node)
        flow = FlowRun(flow_run_id, name, now)
        flow.nodes = records
        flow.output_node = output_node
        flow.output_literal = output_literal
        flow.idempotency_key = idempotency_key
        flow.spec_blob = spec_blob
        flow.priority = priority
        if timeout_s > 0:
            self._flow_deadlines.append((now + timeout_s, flow))
        self.flows[flow_run_id] = flow
        self._changes.new_flows.append(flow)
        if idempotency_key:
            self.idempotency[idempotency_key] = flow_run_id
        self._emit(flow, EventKind.FLOW_RUN_SUBMITTED, now, count=len(records))
        for node in records:
            self._try_expand(flow, node, now)
        self._check_flow_end(flow, now)
        return flow, True

    # ------------------------------------------------------------------ outcomes

    def report(self, worker_id: str, outcomes: list[Outcome], now: float) -> list[int]:
        """Apply a batch of outcomes; return one :class:`Ack` value per outcome.

        An outcome counts only for the current attempt of a running task run
        (fencing); anything else changes no state and is logged as a
        LATE_RESULT_REJECTED event, except a resend of the outcome that
        completed the task run (its ack was lost: the coordinator restarted
        after storing it, or the answer timed out), which is acknowledged as
        stale and adds no event.
        """
        self.touch(worker_id, now)
        acks = []
        for outcome in outcomes:
            tr = self.task_runs.get(outcome.task_run_id)
            if tr is None:
                acks.append(Ack.REJECTED_UNKNOWN)
                continue
            if (
                tr.attempt != outcome.attempt
                or tr.state != TaskRunState.RUNNING
                or tr.worker_id != worker_id
            ):
                acks.append(Ack.REJECTED_STALE)
                if tr.state == TaskRunState.COMPLETED and tr.attempt == outcome.attempt:
                    continue  # only this attempt could complete it: a resend, not a late result
                self._emit(
                    tr.flow,
                    EventKind.LATE_RESULT_REJECTED,
                    now,
                    tr=tr,
                    attempt=outcome.attempt,
                    worker_id=worker_id,
                    message=f"attempt {outcome.attempt} is not current (current: {tr.attempt}, "
                    f"{tr.state.name})",
                )
                continue
            acks.append(Ack.ACCEPTED)
            duration = outcome.duration_s
            # Only a finite, positive duration moves the mean (NaN, inf and
            # negatives from a peer would poison it for good).
            if 0.0 < duration < math.inf and not outcome.infrastructure:
                node = tr.node
                mean = node.mean_duration_s
                node.mean_duration_s = (
                    duration if mean <= 0.0 else mean + _DURATION_WEIGHT * (duration - mean)
                )
            self._release(tr)
            if outcome.error is not None:
                if outcome.infrastructure:
                    self._infra_failure(tr, now, outcome.error, "task process failed")
                else:
                    self._code_failure(
                        tr,
                        now,
                        outcome.error,
                        timed_out=outcome.timed_out,
                        non_retryable=outcome.non_retryable,
                        requested_delay_s=outcome.retry_delay_s,
                    )
            elif tr.node.split and outcome.items is None:
                self._code_failure(tr, now, None, "worker did not split the result for a map")
            elif not tr.node.split and outcome.items is not None:
                self._code_failure(
                    tr, now, None, "worker split a result that no downstream map iterates"
                )
            elif (size := _result_size(outcome)) > self.max_result_bytes:
                tr.error = None
                self._end_failed(
                    tr,
                    now,
                    Stimulus.FAIL,
                    message=f"result is {size} bytes, over the inline result limit of "
                    f"{self.max_result_bytes} bytes (setting max_result_bytes)",
                )
            else:
                tr.result = outcome.value
                tr.items = outcome.items
                self._complete(tr, now)
        return acks

    # ---------------------------------------------------------------------- time

    def tick(self, now: float) -> None:
        """Advance time: start due retries, expire overdue attempts and silent workers."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, tr, attempt = heapq.heappop(timers)
            if tr.state == TaskRunState.AWAITING_RETRY and tr.attempt == attempt:
                self._schedule(tr, now, Stimulus.RETRY_DUE)
        if self._orphans and now >= self._orphans_due:
            orphans, self._orphans = self._orphans, {}
            for tr in orphans.values():
                if tr.state == TaskRunState.RUNNING:
                    self._lose_attempt(
                        tr, now, "coordinator restarted; the worker did not re-attach in time"
                    )
        if self._flow_deadlines:
            self._expire_flows(now)
        if self._attempt_deadlines and self._attempt_deadlines[0][0] <= now:
            self._expire_attempts(now)
        if self._recheck_due and now >= self._recheck_due:
            self._recheck_due = 0.0
            self._recheck_unschedulable(now)
        if self._unschedulable and self.unschedulable_timeout_s > 0:
            self._fail_unschedulable(now)
        deadline = now - self.lease_ttl_s
        for worker in [w for w in self.workers.values() if w.last_seen < deadline]:
            self.lose_worker(worker.worker_id, now, "lease expired: no heartbeat within the TTL")

    # --------------------------------------------------------------- cancellation

    def cancel_flow(self, flow_run_id: str, now: float) -> int | None:
        """Cancel a flow run: every task run that has not ended, at once.

        Pending and queued task runs end CANCELLED; running ones end CANCELLED
        too and release their resources and slots now, and their workers are
        told to stop them at their next heartbeat (the attempt is no longer
        theirs). Nothing new starts afterwards. The flow run ends CANCELLED.

        Returns:
            How many task runs were cancelled, or None for an unknown flow run.
        """
        flow = self.flows.get(flow_run_id)
        if flow is None:
            return None
        if flow.terminal:
            return 0
        flow.cancel_requested = True
        return sum(self._cancel_node(flow, node, now) for node in flow.nodes)

    def cancel_task_run(self, task_run_id: int, now: float) -> int | None:
        """Cancel one task run; its dependents end UPSTREAM_FAILED.

        Returns:
            1 if it was cancelled, 0 if it had ended already, None if unknown.
        """
        tr = self.task_runs.get(task_run_id)
        if tr is None:
            return None
        if tr.state in TERMINAL_TASK_STATES:
            return 0
        self._end_failed(tr, now, Stimulus.CANCEL, message="cancelled")
        return 1

    def cancel_node(self, flow_run_id: str, node_index: int, now: float) -> int | None:
        """Cancel every task run of one node (a map: all its children).

        Returns:
            How many task runs were cancelled, or None if the node is unknown.
        """
        flow = self.flows.get(flow_run_id)
        if flow is None or not 0 <= node_index < len(flow.nodes):
            return None
        return self._cancel_node(flow, flow.nodes[node_index], now)

    # ------------------------------------------------------------------ retention

    def prune(self, ended_before: float) -> list[str]:
        """Forget finished flow runs that ended before ``ended_before`` (epoch seconds).

        Returns:
            The ids of the pruned flow runs (also reported in the next Changes).
        """
        pruned = [f.id for f in self.flows.values() if f.terminal and f.ended_at < ended_before]
        for flow_run_id in pruned:
            flow = self.flows.pop(flow_run_id)
            self._forget_unschedulable(flow)
            if flow.idempotency_key:
                self.idempotency.pop(flow.idempotency_key, None)
            for node in flow.nodes:
                for tr in node.children:
                    self.task_runs.pop(tr.id, None)
                    if self._lease_alone:
                        self._lease_alone.discard(tr.id)
        self._changes.pruned.extend(pruned)
        return pruned

    # ------------------------------------------------------------------- queries

    def flow_result(self, flow: FlowRun) -> Any:
        """The completed flow's result: pickled bytes, a list of values, or a stored reference."""
        if flow.state != FlowRunState.COMPLETED:
            return None
        if flow.output_node is None:
            return flow.output_literal
        return whole_value(flow.nodes[flow.output_node])


def _result_size(outcome: Outcome) -> int:
    """Bytes of an outcome's *inline* result (a stored one is a reference, held for free)."""
    items = outcome.items
    if items is not None:
        return sum(len(item) for item in items) if isinstance(items, list) else 0
    value = outcome.value
    return len(value) if isinstance(value, bytes) else 0
