"""The scheduling core: a pure state machine over flow runs, task runs and workers.

Every entry point takes the current time as an argument and returns plain
values; nothing here reads a clock, sleeps, awaits or touches a socket, so the
core can be driven by tests at many thousands of events per second.

The edge (``runtime.py``) calls these methods from the event loop and then
drains two outputs: :meth:`Scheduler.drain_changed_flows` (flow runs whose
event log grew, to wake watchers) and :meth:`Scheduler.drain_work_added`
(task runs became ready, to wake long-polling workers).

See docs/architecture.md, "State machine", for the transitions.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from fleetflow_coordinator.core.model import (
    Arg,
    ArgKind,
    EventKind,
    EventRecord,
    FlowRun,
    FlowRunState,
    NodeRecord,
    TaskRun,
    TaskRunState,
    WorkerRecord,
)

__all__ = ["Scheduler", "NodeSpec", "InvalidFlowSpec", "LeaseGrant", "Outcome", "Ack"]

_EPS = 1e-9


class InvalidFlowSpec(ValueError):
    """A submitted flow breaks a rule; the message names the node and field."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node of a submission, already converted from the protocol."""

    task_name: str
    is_map: bool
    args: list[Arg]
    resources: dict[str, float]
    retries: int = 0
    retry_delay_s: float = 0.0
    timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A task run attempt handed to a worker, with its resolved arguments.

    ``args`` is ``[(name, bytes | list[bytes])]``: one pickled value, or a
    list of pickled values the worker turns into a Python list.
    """

    task_run: TaskRun
    attempt: int
    args: list[tuple[str, bytes | list[bytes]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's report for one attempt.

    Exactly one of ``value``, ``items`` and ``error`` is set; ``error`` is an
    opaque object from the edge (the TaskError message).
    """

    task_run_id: int
    attempt: int
    value: bytes | None = None
    items: list[bytes] | None = None
    error: Any = None
    infrastructure: bool = False


class Ack:
    """Per-outcome answers; values equal the protocol's ``OutcomeAck``."""

    ACCEPTED = 1
    REJECTED_STALE = 2
    REJECTED_UNKNOWN = 3


class Scheduler:
    """Holds all flow state and decides every transition.

    Args:
        lease_ttl_s: A worker silent this long (seconds) loses its leases.
        max_infra_failures: Attempts of one task run that may end through the
            infrastructure (worker lost, task process died) before the task
            run fails; separate from the task's own ``retries``.
    """

    def __init__(self, *, lease_ttl_s: float = 10.0, max_infra_failures: int = 3) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.max_infra_failures = max_infra_failures
        #: {flow_run_id: FlowRun}
        self.flows: dict[str, FlowRun] = {}
        #: {task_run_id: TaskRun}
        self.task_runs: dict[int, TaskRun] = {}
        #: {worker_id: WorkerRecord}
        self.workers: dict[str, WorkerRecord] = {}
        #: {task_name: {shape: deque[TaskRun]}}; entries go stale when a task
        #: run leaves SCHEDULED and are skipped when popped.
        self.ready: dict[str, dict[tuple, deque[TaskRun]]] = {}
        #: heap of (due time, tie-breaker, TaskRun, attempt) for retry delays
        self._timers: list[tuple[float, int, TaskRun, int]] = []
        self._timer_seq = 0
        #: {idempotency_key: flow_run_id}
        self.idempotency: dict[str, str] = {}
        self._next_task_run_id = 1
        self._changed_flows: set[str] = set()
        self._work_added = False

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
    ) -> tuple[FlowRun, bool]:
        """Accept a flow run whole, or reject it whole.

        Args:
            flow_run_id: New unique id chosen by the edge.
            name: Display name.
            nodes: Nodes in topological order (a node refers only to lower indexes).
            now: Current time, seconds since the epoch.
            output_node: Node whose result is the flow's result, if any.
            output_literal: Pickled constant result when ``output_node`` is None.
            idempotency_key: Optional; a known key returns the existing run.

        Returns:
            ``(flow_run, created)``; ``created`` is False for a known key.

        Raises:
            InvalidFlowSpec: a rule is broken; nothing was accepted.
        """
        if idempotency_key and idempotency_key in self.idempotency:
            return self.flows[self.idempotency[idempotency_key]], False
        records = _validate_and_link(nodes, output_node)
        flow = FlowRun(flow_run_id, name, now)
        flow.nodes = records
        flow.output_node = output_node
        flow.output_literal = output_literal
        flow.idempotency_key = idempotency_key
        self.flows[flow_run_id] = flow
        if idempotency_key:
            self.idempotency[idempotency_key] = flow_run_id
        self._event(flow, EventKind.FLOW_RUN_SUBMITTED, now, count=len(records))
        for node in records:
            self._try_expand(flow, node, now)
        self._check_flow_end(flow, now)
        return flow, True

    # -------------------------------------------------------------------- workers

    def register_worker(
        self,
        worker_id: str,
        capacity: dict[str, float],
        task_names: frozenset[str],
        now: float,
        *,
        hostname: str = "",
        pid: int = 0,
    ) -> WorkerRecord:
        """Add a worker, or refresh one that registers again.

        A worker that registers again keeps its running task runs (it may have
        lost its connection only); its capacity and task names are replaced.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = WorkerRecord(worker_id, dict(capacity), task_names, now, hostname, pid)
            self.workers[worker_id] = worker
        else:
            worker.capacity = dict(capacity)
            worker.task_names = task_names
            worker.last_seen = now
        self._work_added = True
        self._recheck_unschedulable()
        return worker

    def heartbeat(
        self,
        worker_id: str,
        running: list[tuple[int, int]],
        now: float,
        *,
        cpu_percent: float = 0.0,
        memory_available: float = 0.0,
    ) -> tuple[bool, list[tuple[int, int]]]:
        """Renew a worker's leases and reconcile what it runs.

        Args:
            worker_id: The worker's id.
            running: ``[(task_run_id, attempt)]`` the worker is running now.
            now: Current time, seconds since the epoch.
            cpu_percent: Machine CPU use, percent (0-100).
            memory_available: Available memory, bytes.

        Returns:
            ``(known, cancel)``: known is False for an unknown worker (it must
            register again); cancel lists attempts the worker should stop
            because they are no longer its to run.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            return False, []
        worker.last_seen = now
        worker.cpu_percent = cpu_percent
        worker.memory_available = memory_available
        cancel = []
        reported = set()
        for task_run_id, attempt in running:
            reported.add(task_run_id)
            tr = worker.running.get(task_run_id)
            if tr is None or tr.attempt != attempt:
                cancel.append((task_run_id, attempt))
        # Leases the worker does not know about: the lease response was lost.
        for tr in list(worker.running.values()):
            if tr.id not in reported and now - tr.leased_at > self.lease_ttl_s:
                self._lose_attempt(tr, now, "lease lost in transit: the worker never started it")
        return True, cancel

    def touch(self, worker_id: str, now: float) -> bool:
        """Record that a worker is alive; returns whether it is known."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return False
        worker.last_seen = now
        return True

    def lease(self, worker_id: str, max_task_runs: int, now: float) -> list[LeaseGrant] | None:
        """Lease up to ``max_task_runs`` ready task runs that fit on the worker.

        Returns:
            The grants (possibly empty), or None when the worker is unknown.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            return None
        worker.last_seen = now
        grants: list[LeaseGrant] = []
        for task_name in worker.task_names:
            queues = self.ready.get(task_name)
            if not queues:
                continue
            for shape, queue in list(queues.items()):
                if len(grants) >= max_task_runs:
                    return grants
                room = _room_for(worker, shape[1])
                while queue and room > 0 and len(grants) < max_task_runs:
                    tr = queue.popleft()
                    if tr.state != TaskRunState.SCHEDULED:
                        continue  # stale entry
                    grants.append(self._grant(tr, worker, now))
                    room -= 1
                if not queue:
                    del queues[shape]
        return grants

    # ------------------------------------------------------------------ outcomes

    def report(self, worker_id: str, outcomes: list[Outcome], now: float) -> list[int]:
        """Apply a batch of outcomes; return one :class:`Ack` value per outcome.

        An outcome counts only for the current attempt of a running task run
        (fencing); anything else changes no state and is logged as a
        LATE_RESULT_REJECTED event.
        """
        self.touch(worker_id, now)
        acks = []
        for outcome in outcomes:
            tr = self.task_runs.get(outcome.task_run_id)
            if tr is None:
                acks.append(Ack.REJECTED_UNKNOWN)
                continue
            if tr.attempt != outcome.attempt or tr.state != TaskRunState.RUNNING:
                acks.append(Ack.REJECTED_STALE)
                self._event(
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
            self._release(tr)
            if outcome.error is not None:
                if outcome.infrastructure:
                    self._infra_failure(tr, now, outcome.error, "task process failed")
                else:
                    self._code_failure(tr, now, outcome.error)
            elif tr.node.split and outcome.items is None:
                self._code_failure(tr, now, None, "worker did not split the result for a map")
            else:
                tr.result = outcome.value
                tr.items = outcome.items
                self._complete(tr, now)
        return acks

    # ---------------------------------------------------------------------- time

    def tick(self, now: float) -> None:
        """Advance time: start due retries and expire silent workers."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, tr, attempt = heapq.heappop(timers)
            if tr.state == TaskRunState.AWAITING_RETRY and tr.attempt == attempt:
                self._schedule(tr, now)
        deadline = now - self.lease_ttl_s
        for worker in [w for w in self.workers.values() if w.last_seen < deadline]:
            self.lose_worker(worker.worker_id, now, "lease expired: no heartbeat within the TTL")

    def lose_worker(self, worker_id: str, now: float, reason: str) -> None:
        """Forget a worker and re-queue every attempt it held as a new attempt."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        for tr in list(worker.running.values()):
            self._lose_attempt(tr, now, reason)
        self._recheck_unschedulable()

    # ----------------------------------------------------------------- internals

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
        flow.events.append(EventRecord(len(flow.events) + 1, kind, now, **fields))
        self._changed_flows.add(flow.id)

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
                    if state in _FAILED_STATES:
                        blocked = True
            tr.pending = pending
            if blocked:
                upstream_failed.append(tr)
            elif pending == 0:
                self._schedule(tr, now)
        for tr in upstream_failed:
            if tr.state not in _FAILED_STATES:
                self._end_failed(tr, now, TaskRunState.UPSTREAM_FAILED)
        for consumer in node.item_consumers:
            self._try_expand(flow, nodes[consumer], now)
        self._check_node_end(flow, node, now)

    def _schedule(self, tr: TaskRun, now: float) -> None:
        node = tr.node
        self._set_state(tr, TaskRunState.SCHEDULED)
        queues = self.ready.setdefault(node.task_name, {})
        queue = queues.get(node.shape)
        if queue is None:
            queue = queues[node.shape] = deque()
        queue.append(tr)
        self._work_added = True
        self._event(tr.flow, EventKind.TASK_RUN_SCHEDULED, now, tr=tr)
        if not node.unschedulable_reported:
            reason = self._unschedulable_reason(node)
            if reason:
                node.unschedulable_reported = True
                self._event(tr.flow, EventKind.TASK_RUN_UNSCHEDULABLE, now, tr=tr, message=reason)

    def _unschedulable_reason(self, node: NodeRecord) -> str:
        offering = [w for w in self.workers.values() if node.task_name in w.task_names]
        if not offering:
            return f"no connected worker offers task {node.task_name!r}"
        for worker in offering:
            if all(worker.capacity.get(r, 0.0) + _EPS >= a for r, a in node.resources.items()):
                return ""
        parts = []
        for resource, amount in sorted(node.resources.items()):
            largest = max(w.capacity.get(resource, 0.0) for w in offering)
            if largest + _EPS < amount:
                parts.append(f"needs {resource}={amount:g}; the largest worker offers {largest:g}")
        return "; ".join(parts)

    def _recheck_unschedulable(self) -> None:
        """Let a node report again once the fleet changed."""
        for flow in self.flows.values():
            if flow.terminal:
                continue
            for node in flow.nodes:
                if node.unschedulable_reported and self._unschedulable_reason(node) == "":
                    node.unschedulable_reported = False

    def _grant(self, tr: TaskRun, worker: WorkerRecord, now: float) -> LeaseGrant:
        self._set_state(tr, TaskRunState.RUNNING)
        tr.worker_id = worker.worker_id
        tr.leased_at = now
        worker.running[tr.id] = tr
        allocated = worker.allocated
        for resource, amount in tr.node.resources.items():
            allocated[resource] = allocated.get(resource, 0.0) + amount
        self._event(tr.flow, EventKind.TASK_RUN_STARTED, now, tr=tr, worker_id=worker.worker_id)
        return LeaseGrant(tr, tr.attempt, self._resolve_args(tr))

    def _resolve_args(self, tr: TaskRun) -> list[tuple[str, bytes | list[bytes]]]:
        nodes = tr.flow.nodes
        i = tr.index
        out: list[tuple[str, bytes | list[bytes]]] = []
        for arg in tr.node.args:
            kind = arg.kind
            if kind == ArgKind.LITERAL:
                out.append((arg.name, arg.payload))
            elif kind == ArgKind.LITERAL_ITEMS:
                out.append((arg.name, arg.payload[i]))
            elif kind == ArgKind.NODES:
                out.append((arg.name, [_whole_single(nodes[u]) for u in arg.payload]))
            else:
                upstream = nodes[arg.payload]
                if not arg.mapped:
                    out.append((arg.name, whole_value(upstream)))
                elif upstream.is_map:
                    out.append((arg.name, upstream.children[i].result or b""))
                else:
                    out.append((arg.name, (upstream.children[0].items or [])[i]))
        return out

    def _release(self, tr: TaskRun) -> None:
        worker = self.workers.get(tr.worker_id or "")
        if worker is not None and worker.running.pop(tr.id, None) is not None:
            allocated = worker.allocated
            for resource, amount in tr.node.resources.items():
                left = allocated.get(resource, 0.0) - amount
                allocated[resource] = 0.0 if left < _EPS else left
            self._work_added = True  # freed capacity may let a waiting long poll lease
        tr.worker_id = None

    def _lose_attempt(self, tr: TaskRun, now: float, reason: str) -> None:
        self._release(tr)
        self._event(tr.flow, EventKind.TASK_RUN_LEASE_EXPIRED, now, tr=tr, message=reason)
        self._infra_failure(tr, now, None, reason)

    def _infra_failure(self, tr: TaskRun, now: float, error: Any, reason: str) -> None:
        tr.infra_failures += 1
        if error is not None:
            tr.error = error
        if tr.infra_failures >= self.max_infra_failures:
            message = f"{reason}; gave up after {tr.infra_failures} infrastructure failures"
            self._end_failed(tr, now, TaskRunState.FAILED, message=message)
            return
        tr.attempt += 1
        self._schedule(tr, now)

    def _code_failure(self, tr: TaskRun, now: float, error: Any, message: str = "") -> None:
        tr.code_failures += 1
        tr.error = error
        node = tr.node
        if tr.code_failures <= node.retries:
            tr.retry_at = now + node.retry_delay_s
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
        self._end_failed(tr, now, TaskRunState.FAILED, message=message)

    def _complete(self, tr: TaskRun, now: float) -> None:
        flow = tr.flow
        node = tr.node
        self._set_state(tr, TaskRunState.COMPLETED)
        node.n_terminal += 1
        self._event(flow, EventKind.TASK_RUN_COMPLETED, now, tr=tr)
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
        flow.any_failed = True
        if state == TaskRunState.FAILED:
            kind = EventKind.TASK_RUN_FAILED
            if flow.first_error is None:
                flow.first_error = (node.task_name, tr.error, message)
        else:
            kind = EventKind.TASK_RUN_UPSTREAM_FAILED
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
        flow.any_failed = True
        if own and flow.first_error is None:
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
        if flow.any_failed:
            flow.state = FlowRunState.FAILED
            self._event(flow, EventKind.FLOW_RUN_FAILED, now)
        else:
            flow.state = FlowRunState.COMPLETED
            self._event(flow, EventKind.FLOW_RUN_COMPLETED, now)

    # ------------------------------------------------------------------- queries

    def flow_result(self, flow: FlowRun) -> bytes | list[bytes] | None:
        """The completed flow's result: pickled bytes or a list of them."""
        if flow.state != FlowRunState.COMPLETED:
            return None
        if flow.output_node is None:
            return flow.output_literal
        return whole_value(flow.nodes[flow.output_node])


_FAILED_STATES = frozenset(
    {
        TaskRunState.FAILED,
        TaskRunState.UPSTREAM_FAILED,
        TaskRunState.CANCELLED,
        TaskRunState.TIMED_OUT,
    }
)


def whole_value(node: NodeRecord) -> bytes | list[bytes]:
    """A completed node's whole result as the worker should receive it."""
    if node.is_map:
        return [tr.result or b"" for tr in node.children]
    child = node.children[0]
    if child.items is not None:
        return child.items
    return child.result or b""


def _whole_single(node: NodeRecord) -> bytes:
    value = whole_value(node)
    assert isinstance(value, bytes), "validated at submission: gathered nodes are plain"
    return value


def _room_for(worker: WorkerRecord, shape: tuple) -> int:
    """How many task runs of this resource shape still fit on the worker."""
    room = math.inf
    capacity = worker.capacity
    allocated = worker.allocated
    for resource, amount in shape:
        if amount <= 0:
            continue
        free = capacity.get(resource, 0.0) - allocated.get(resource, 0.0)
        room = min(room, math.floor((free + _EPS) / amount))
        if room <= 0:
            return 0
    return 1_000_000 if room == math.inf else int(room)


def _validate_and_link(nodes: list[NodeSpec], output_node: int | None) -> list[NodeRecord]:
    """Check every rule of a submission and build linked node records.

    Raises:
        InvalidFlowSpec: naming ``nodes[i]`` (task) and the field that broke a rule.
    """
    records: list[NodeRecord] = []
    for i, spec in enumerate(nodes):
        where = f"nodes[{i}] ({spec.task_name or '?'})"
        if not spec.task_name:
            raise InvalidFlowSpec(f"{where}.task_name: must not be empty")
        for resource, amount in spec.resources.items():
            if not resource:
                raise InvalidFlowSpec(f"{where}.resources: names must not be empty")
            if not math.isfinite(amount) or amount < 0:
                raise InvalidFlowSpec(
                    f"{where}.resources[{resource!r}] = {amount}: must be finite and >= 0"
                )
        for field, value in (
            ("retry_delay_seconds", spec.retry_delay_s),
            ("timeout_seconds", spec.timeout_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise InvalidFlowSpec(f"{where}.{field} = {value}: must be finite and >= 0")
        record = NodeRecord(
            i,
            spec.task_name,
            spec.is_map,
            list(spec.args),
            dict(spec.resources),
            spec.retries,
            spec.retry_delay_s,
            spec.timeout_s,
        )
        names = set()
        literal_lengths = set()
        whole: set[int] = set()
        items: set[int] = set()
        for arg in spec.args:
            field = f"{where}.args[{arg.name!r}]"
            if not arg.name:
                raise InvalidFlowSpec(f"{where}.args: every argument needs a name")
            if arg.name in names:
                raise InvalidFlowSpec(f"{field}: given twice")
            names.add(arg.name)
            if arg.mapped and not spec.is_map:
                raise InvalidFlowSpec(f"{field}.mapped: only map nodes iterate arguments")
            if arg.kind == ArgKind.LITERAL_ITEMS:
                if not arg.mapped:
                    raise InvalidFlowSpec(f"{field}.literal_items: needs mapped=true")
                literal_lengths.add(len(arg.payload))
            refs = arg.payload if arg.kind == ArgKind.NODES else [arg.payload]
            if arg.kind in (ArgKind.NODE, ArgKind.NODES):
                if arg.kind == ArgKind.NODES and not refs:
                    raise InvalidFlowSpec(f"{field}.nodes: must not be empty")
                for ref in refs:
                    if not isinstance(ref, int) or not 0 <= ref < i:
                        raise InvalidFlowSpec(
                            f"{field}: refers to node {ref}; a node may only use earlier nodes"
                        )
                    if arg.kind == ArgKind.NODES and records[ref].is_map:
                        raise InvalidFlowSpec(
                            f"{field}.nodes: node {ref} is a map; pass a map node directly"
                        )
                if arg.mapped and records[arg.payload].is_map:
                    items.add(arg.payload)
                else:
                    whole.update(refs)
                    if arg.mapped:
                        records[arg.payload].split = True
        if spec.is_map:
            if not any(a.mapped for a in spec.args):
                raise InvalidFlowSpec(
                    f"{where}.args: a map node needs at least one mapped argument"
                )
            if len(literal_lengths) > 1:
                raise InvalidFlowSpec(f"{where}.args: mapped constant lists differ in length")
        record.whole_deps = sorted(whole)
        record.item_deps = sorted(items)
        record.whole_pending = len(whole)
        for u in whole:
            records[u].whole_consumers.append(i)
        for u in items:
            records[u].item_consumers.append(i)
        records.append(record)
    for i, spec in enumerate(nodes):
        for arg in spec.args:
            if arg.kind == ArgKind.NODES and any(records[u].split for u in arg.payload):
                raise InvalidFlowSpec(
                    f"nodes[{i}] ({spec.task_name}).args[{arg.name!r}]: a gathered node is also "
                    "mapped over elsewhere; pass it directly instead of inside a list"
                )
    if output_node is not None and not 0 <= output_node < len(records):
        raise InvalidFlowSpec(f"output_node = {output_node}: no such node")
    return records
