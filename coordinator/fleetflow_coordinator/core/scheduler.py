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
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any, NamedTuple

from fleetflow_coordinator.core.model import (
    TERMINAL_TASK_STATES,
    Arg,
    ArgKind,
    EventKind,
    EventLog,
    EventRecord,
    FlowRun,
    FlowRunState,
    NodeRecord,
    SlotBatch,
    TaskRun,
    TaskRunState,
    WorkerRecord,
)
from fleetflow_coordinator.core.retry import RetryPolicy, retry_delay

__all__ = [
    "Scheduler",
    "NodeSpec",
    "InvalidFlowSpec",
    "LeaseGrant",
    "Outcome",
    "Ack",
    "Changes",
    "RestoredFlow",
    "RestoredTaskRun",
]

_EPS = 1e-9


#: How many smaller task runs may overtake a task run that a worker could hold
#: when empty but has no room for now; then that worker is reserved for it.
MAX_OVERTAKES = 16

#: A lease batch is sized so its members take about this long in all, by the
#: node's mean reported duration (seconds): long enough to spread one RPC, one
#: commit and one process hand-off over many short task runs, short enough that
#: a batch never holds ready work back from another worker for long.
BATCH_TARGET_S = 0.05

#: The largest lease batch, whatever a worker asks for.
MAX_BATCH = 512

#: A worker that asked for leases this recently (seconds) shares in a lane's
#: tail when batches are sized; workers that never lease (or stopped) do not.
LEASING_WINDOW_S = 2.0

#: Weight of the newest duration in a node's moving average.
_DURATION_WEIGHT = 0.2


class Lane:
    """Ready task runs of one node, in FIFO order."""

    __slots__ = ("node", "flow", "queue", "overtaken", "reserved_worker")

    def __init__(self, flow: FlowRun, node: NodeRecord) -> None:
        self.flow = flow
        self.node = node
        self.queue: deque[TaskRun] = deque()
        #: Task runs of other lanes granted on workers that could hold this
        #: lane's head once cleared (reset when this lane is granted).
        self.overtaken = 0
        #: The worker being cleared for this lane's head, if any.
        self.reserved_worker: str | None = None


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
    retry_delays_s: tuple[float, ...] = ()
    backoff: float = 1.0
    max_delay_s: float = 0.0
    jitter: float = 0.0
    tags: tuple[str, ...] = ()
    concurrency_limit: int = 0
    pool: str = "default"


class LeaseGrant(NamedTuple):
    """A task run attempt handed to a worker, with its resolved arguments.

    ``args`` is ``[(name, bytes | list[bytes])]``: one pickled value, or a
    list of pickled values the worker turns into a Python list.
    """

    task_run: TaskRun
    attempt: int
    args: list[tuple[str, bytes | list[bytes]]]
    #: Nonzero when this grant is a member of a batch (same id for all
    #: members): the worker runs them one after another in one slot.
    batch: int = 0


class Outcome(NamedTuple):
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
    #: The attempt ran past its timeout and was stopped.
    timed_out: bool = False
    #: Fail now whatever retries are left (NonRetryableError, or not in retry_on).
    non_retryable: bool = False
    #: A delay the task asked for with fleetflow.Retry(delay=...), seconds.
    retry_delay_s: float | None = None
    #: Wall time of the task code, seconds (0: not measured); sizes batches.
    duration_s: float = 0.0


@dataclass(slots=True)
class Changes:
    """What changed since the last :meth:`Scheduler.drain_changes`: the store's input.

    Attributes:
        new_flows: Flow runs submitted since (their spec is written once).
        flows: Flow runs whose state, end time or first error may have changed.
        nodes: ``(flow, node)`` pairs expanded or failed.
        task_runs: Task runs whose row changed.
        events: ``(flow_run_id, EventRecord)`` appended, in order (the plain
            per-task-run ones are in ``event_rows`` instead).
        expansions: ``(flow, node, first task run id, count, first seq, time)``
            of map expansions that created every child SCHEDULED at once; they
            stand for those children's first rows and TASK_RUN_SCHEDULED
            events, which are in neither ``task_runs`` nor ``events``.
        pruned: Ids of flow runs removed by retention.
    """

    new_flows: list[FlowRun]
    flows: set[FlowRun]
    nodes: set[tuple[FlowRun, NodeRecord]]
    task_runs: set[TaskRun]
    events: list[tuple[str, EventRecord]]
    pruned: list[str]
    expansions: list[tuple[FlowRun, NodeRecord, int, int, int, float]] = _field(
        default_factory=list
    )
    #: Rows (the store's ``EVENT_COLUMNS``) of plain per-task-run events, which
    #: are in the log but not in ``events``.
    event_rows: list[tuple] = _field(default_factory=list)
    #: The next task run id to issue, stored so pruned ids are never reused.
    next_task_run_id: int = 0

    def __len__(self) -> int:
        return (
            len(self.new_flows)
            + len(self.flows)
            + len(self.nodes)
            + len(self.task_runs)
            + len(self.events)
            + len(self.event_rows)
            + 2 * len(self.expansions)
            + len(self.pruned)
        )


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

    def __init__(
        self,
        *,
        lease_ttl_s: float = 10.0,
        max_infra_failures: int = 3,
        max_result_bytes: int = 1 << 20,
        uniform: Callable[[], float] = lambda: 0.5,
        concurrency_limits: dict[str, int] | None = None,
        unschedulable_timeout_s: float = 300.0,
    ) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.max_infra_failures = max_infra_failures
        self.max_result_bytes = max_result_bytes
        #: Returns a float in [0, 1) for retry jitter; injected (no random here).
        self.uniform = uniform
        #: A task run that no connected worker could ever run fails after this
        #: many seconds (0: never).
        self.unschedulable_timeout_s = unschedulable_timeout_s
        #: {(flow_run_id, node index): (node, since, reason)} nodes reported unschedulable
        self._unschedulable: dict[tuple[str, int], tuple[NodeRecord, float, str]] = {}
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
        self._changes = self._empty_changes()

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
        return len(self._changes) > 0

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
            idempotency_key: Optional; a known key returns the existing run.
            spec_blob: The spec as received (opaque), kept for the store.
            priority: Higher is leased first among ready task runs that fit.
            timeout_s: The flow run's time limit in seconds (0: none).

        Returns:
            ``(flow_run, created)``; ``created`` is False for a known key.

        Raises:
            InvalidFlowSpec: a rule is broken; nothing was accepted.
        """
        if idempotency_key and idempotency_key in self.idempotency:
            return self.flows[self.idempotency[idempotency_key]], False
        if not (math.isfinite(timeout_s) and timeout_s >= 0):
            raise InvalidFlowSpec(f"timeout_seconds = {timeout_s}: must be finite and >= 0")
        records = _validate_and_link(nodes, output_node)
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
        running: list[tuple[int, int]] = (),
        pools: frozenset[str] = frozenset({"default"}),
    ) -> WorkerRecord:
        """Add a worker, or refresh one that registers again.

        A worker that registers again keeps its running task runs (it may have
        lost its connection only); its capacity and task names are replaced.
        ``running`` (``[(task_run_id, attempt)]``) re-attaches attempts the
        worker still holds, e.g. after a coordinator restart; attempts that are
        not current are ignored here and cancelled by the next heartbeat.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = WorkerRecord(worker_id, dict(capacity), task_names, now, hostname, pid)
            self.workers[worker_id] = worker
        else:
            worker.capacity = dict(capacity)
            worker.task_names = task_names
            worker.last_seen = now
        worker.pools = pools or frozenset({"default"})
        self._fleet_version += 1
        for task_run_id, attempt in running:
            tr = self.task_runs.get(task_run_id)
            if (
                tr is None
                or tr.attempt != attempt
                or tr.state != TaskRunState.RUNNING
                or tr.worker_id != worker_id
                or task_run_id in worker.running
            ):
                continue
            self._orphans.pop(task_run_id, None)
            worker.running[task_run_id] = tr
            for resource, amount in tr.node.resources.items():
                worker.allocated[resource] = worker.allocated.get(resource, 0.0) + amount
        self._work_added = True
        self._recheck_unschedulable(now)
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
        # One worker's odd readings (NaN, negative) must not reach every dashboard.
        worker.cpu_percent = cpu_percent if 0.0 <= cpu_percent < math.inf else 0.0
        worker.memory_available = memory_available if 0.0 <= memory_available < math.inf else 0.0
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

    def excuse_stall(self, seconds: float) -> None:
        """The coordinator itself stalled for ``seconds``: that silence is not the workers'.

        Moves every worker's last sign of life ``seconds`` later, so a worker
        whose heartbeats queued up unread while the coordinator was blocked is
        not declared lost for it. A worker really gone is declared lost that
        much later.
        """
        if seconds > 0:
            for worker in self.workers.values():
                worker.last_seen += seconds

    def touch(self, worker_id: str, now: float) -> bool:
        """Record that a worker is alive; returns whether it is known."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return False
        worker.last_seen = now
        return True

    def lease(
        self, worker_id: str, max_task_runs: int, now: float, *, max_batch: int = 1
    ) -> list[LeaseGrant] | None:
        """Lease ready task runs that fit on the worker, for up to ``max_task_runs`` slots.

        A slot is one allocation of a node's resources. With ``max_batch`` > 1
        a slot may hold a batch of up to ``max_batch`` task runs of one node,
        to be run one after another (:data:`BATCH_TARGET_S` sizes it from the
        node's reported durations; a node with none reported yet gets 1).

        Leasing does not count as a sign of life (:meth:`touch` does): the
        edge may call this again and again for one long poll that a worker
        sent before it went silent, and that must not keep it alive past the
        lease TTL.

        Returns:
            The grants (possibly empty; batch members share ``batch``), or
            None when the worker is unknown.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            return None
        if worker.last_lease < now - LEASING_WINDOW_S:
            self._leasing += 1  # it just (re)joined the leasing workers
        worker.last_lease = now
        if now - self._leasing_at > LEASING_WINDOW_S / 4:
            since = now - LEASING_WINDOW_S
            self._leasing = sum(1 for w in self.workers.values() if w.last_lease >= since)
            self._leasing_at = now
        grants: list[LeaseGrant] = []
        reserved = self._reservations.get(worker_id)
        if reserved is not None:
            tr = self._next_ready(reserved)
            if tr is None or reserved.node.pool not in worker.pools:
                self._unreserve(reserved)
            elif _room_for(worker, reserved.node.shape[1]) > 0 and self._slot_free(reserved.node):
                reserved.queue.popleft()
                grants.append(self._grant(tr, worker, now, reserved))
                self._unreserve(reserved)
                reserved.overtaken = 0
            else:
                return grants  # being cleared for the reserved task run: nothing smaller
        lanes: list[Lane] = []
        ready = self.ready
        pools = worker.pools
        for task_name in worker.task_names:
            by_node = ready.get(task_name)
            if by_node:
                lanes.extend(lane for lane in by_node.values() if lane.node.pool in pools)
        if not lanes:
            return grants
        if len(lanes) > 1:
            # Higher priority first; within a priority, flow runs take turns,
            # starting one lane further after every call that granted something
            # (calls that find no room, like idle long polls, must not shift it).
            rotate = self._rr % len(lanes)
            lanes = lanes[rotate:] + lanes[:rotate]
            lanes.sort(key=lambda lane: -lane.flow.priority)
        self._max_batch = max(1, min(max_batch, MAX_BATCH))
        self._slots = len(grants)
        start = 0
        while start < len(lanes) and self._slots < max_task_runs:
            # One priority level at a time: lower levels get only what is left.
            priority = lanes[start].flow.priority
            end = start
            while end < len(lanes) and lanes[end].flow.priority == priority:
                end += 1
            self._lease_round_robin(worker, lanes[start:end], grants, max_task_runs, now)
            start = end
        self._max_batch = 1
        if grants:
            self._rr += 1
        return grants

    def _lease_round_robin(
        self,
        worker: WorkerRecord,
        lanes: list[Lane],
        grants: list[LeaseGrant],
        max_task_runs: int,
        now: float,
    ) -> None:
        """Take one task run from each lane in turn while the worker has room.

        A lane whose head the worker could hold once cleared, but has no room
        for now, counts the task runs that overtake it; after
        :data:`MAX_OVERTAKES` the worker is reserved for it (see :meth:`lease`).
        """
        # Lanes the worker could hold once cleared but has no room for now: every
        # grant to another lane overtakes them (room only shrinks within a call).
        starving = [
            lane
            for lane in lanes
            if lane.reserved_worker is None
            and self._next_ready(lane) is not None
            and _room_for(worker, lane.node.shape[1]) <= 0
            and _could_hold(worker, lane.node.shape[1])
        ]
        while lanes and self._slots < max_task_runs:
            open_lanes = []
            for lane in lanes:
                tr = self._next_ready(lane)
                if tr is None:
                    continue
                node = lane.node
                if not self._slot_free(node) or _room_for(worker, node.shape[1]) <= 0:
                    continue  # this lane waits; others may still fit
                lane.queue.popleft()
                size = self._batch_size(lane) if self._max_batch > 1 else 1
                if size > 1:
                    self._grant_batch(tr, size, worker, now, lane, grants)
                else:
                    grants.append(self._grant(tr, worker, now, lane))
                self._slots += 1
                lane.overtaken = 0
                open_lanes.append(lane)
                for waiting in starving:
                    waiting.overtaken += 1
                    if waiting.overtaken >= MAX_OVERTAKES and waiting.reserved_worker is None:
                        waiting.reserved_worker = worker.worker_id
                        self._reservations[worker.worker_id] = waiting
                        return
                if self._slots >= max_task_runs:
                    return
            lanes = open_lanes

    def _batch_size(self, lane: Lane) -> int:
        """How many task runs of ``lane`` one slot should take now (>= 1)."""
        mean = lane.node.mean_duration_s
        if mean <= 0.0 or mean >= BATCH_TARGET_S / 2:
            return 1
        size = min(self._max_batch, int(BATCH_TARGET_S / mean))
        # Leave some of the lane for the other workers that lease, so the tail is shared.
        share = -(-(len(lane.queue) + 1) // max(1, self._leasing))
        return max(1, min(size, share))

    def _grant_batch(
        self,
        head: TaskRun,
        size: int,
        worker: WorkerRecord,
        now: float,
        lane: Lane,
        grants: list[LeaseGrant],
    ) -> None:
        """Grant ``head`` and up to ``size - 1`` more of ``lane`` as one batch in one slot."""
        members = [head]
        queue = lane.queue
        while queue and len(members) < size:
            tr = queue.popleft()
            if tr.state == TaskRunState.SCHEDULED:
                members.append(tr)
        if len(members) == 1:
            grants.append(self._grant(head, worker, now, lane))
            return
        self._batch_seq += 1
        batch = SlotBatch(self._batch_seq, len(members))
        grants.append(self._grant(head, worker, now, lane, batch.id))
        head.batch = batch
        worker_id = worker.worker_id
        running = worker.running
        for tr in members[1:]:
            args = self._resolve_args(tr)
            self._set_state(tr, TaskRunState.RUNNING)
            tr.worker_id = worker_id
            tr.leased_at = now
            tr.batch = batch
            running[tr.id] = tr
            self._task_event(tr, EventKind.TASK_RUN_STARTED, now, worker_id)
            grants.append(LeaseGrant(tr, tr.attempt, args, batch.id))

    def _unreserve(self, lane: Lane) -> None:
        if lane.reserved_worker is not None:
            self._reservations.pop(lane.reserved_worker, None)
            lane.reserved_worker = None

    def _next_ready(self, lane: Lane) -> TaskRun | None:
        """The lane's first task run that is still SCHEDULED; drops stale ones."""
        queue = lane.queue
        while queue:
            tr = queue[0]
            if tr.state == TaskRunState.SCHEDULED:
                return tr
            queue.popleft()
        by_node = self.ready.get(lane.node.task_name)
        key = (lane.flow.id, lane.node.index)
        if by_node is not None and by_node.get(key) is lane:
            del by_node[key]
        self._unreserve(lane)  # an empty lane holds no worker
        return None

    def _slot_keys(self, node: NodeRecord) -> list[tuple[tuple[str, str], int]]:
        keys = [(("tag", t), self.limits[t]) for t in node.tags if t in self.limits]
        if node.concurrency_limit:
            keys.append((("task", node.task_name), node.concurrency_limit))
        return keys

    def _slot_free(self, node: NodeRecord) -> bool:
        held = self.slots_held
        return all(held.get(key, 0) < limit for key, limit in self._slot_keys(node))

    def _take_slots(self, node: NodeRecord, delta: int) -> None:
        held = self.slots_held
        for tag in node.tags:
            key = ("tag", tag)
            held[key] = held.get(key, 0) + delta
        if node.concurrency_limit:
            key = ("task", node.task_name)
            held[key] = held.get(key, 0) + delta

    def set_limit(self, tag: str, limit: int | None) -> None:
        """Set a named concurrency limit (None removes it); work may become leasable."""
        if limit is None:
            self.limits.pop(tag, None)
        else:
            self.limits[tag] = limit
        self._work_added = True

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
            if (
                tr.attempt != outcome.attempt
                or tr.state != TaskRunState.RUNNING
                or tr.worker_id != worker_id
            ):
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
            duration = outcome.duration_s
            if duration > 0.0 and not outcome.infrastructure:
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
                    TaskRunState.FAILED,
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
        """Advance time: start due retries and expire silent workers."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, tr, attempt = heapq.heappop(timers)
            if tr.state == TaskRunState.AWAITING_RETRY and tr.attempt == attempt:
                self._schedule(tr, now)
        if self._orphans and now >= self._orphans_due:
            orphans, self._orphans = self._orphans, {}
            for tr in orphans.values():
                if tr.state == TaskRunState.RUNNING:
                    self._lose_attempt(
                        tr, now, "coordinator restarted; the worker did not re-attach in time"
                    )
        if self._flow_deadlines:
            self._expire_flows(now)
        if self._recheck_due and now >= self._recheck_due:
            self._recheck_due = 0.0
            self._recheck_unschedulable(now)
        if self._unschedulable and self.unschedulable_timeout_s > 0:
            self._fail_unschedulable(now)
        deadline = now - self.lease_ttl_s
        for worker in [w for w in self.workers.values() if w.last_seen < deadline]:
            self.lose_worker(worker.worker_id, now, "lease expired: no heartbeat within the TTL")

    def release_leases(self, worker_id: str, released: list[tuple[int, int]], now: float) -> int:
        """A draining worker hands back attempts it stopped: re-queue them at once.

        A hand-back is orderly, so it uses up neither the task's retries nor its
        infrastructure budget. Attempts that are not current are ignored.

        Returns:
            How many attempts were re-queued.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            return 0
        worker.last_seen = now
        requeued = 0
        for task_run_id, attempt in released:
            tr = worker.running.get(task_run_id)
            if tr is None or tr.attempt != attempt or tr.state != TaskRunState.RUNNING:
                continue
            self._release(tr)
            self._event(
                tr.flow,
                EventKind.TASK_RUN_LEASE_EXPIRED,
                now,
                tr=tr,
                worker_id=worker_id,
                message="handed back by a draining worker",
            )
            tr.attempt += 1
            self._schedule(tr, now)
            requeued += 1
        return requeued

    def lose_worker(self, worker_id: str, now: float, reason: str) -> None:
        """Forget a worker and re-queue every attempt it held as a new attempt."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        self._fleet_version += 1
        lane = self._reservations.pop(worker_id, None)
        if lane is not None:
            lane.reserved_worker = None
        for tr in list(worker.running.values()):
            self._lose_attempt(tr, now, reason)
        self._recheck_unschedulable(now)

    # -------------------------------------------------------------------- demand

    def demand(self) -> list[tuple[str, dict[str, float], int, list[str], str]]:
        """Queued demand: ``[(pool, resources, waiting, task_names, unschedulable reason)]``.

        One entry per pool and resource shape, largest first, from the ready
        lanes' per-node counters (no walk over task runs).
        """
        groups: dict[tuple[str, tuple], list] = {}
        for by_node in self.ready.values():
            for lane in by_node.values():
                node = lane.node
                waiting = node.counts[TaskRunState.SCHEDULED]
                if not waiting:
                    continue
                key = (node.pool, node.shape[1])
                entry = groups.get(key)
                if entry is None:
                    entry = groups[key] = [0, set(), ""]
                entry[0] += waiting
                entry[1].add(node.task_name)
                if node.unschedulable_reported and not entry[2]:
                    entry[2] = self._unschedulable_reason(node)
        out = [
            (pool, dict(shape), count, sorted(names), reason)
            for (pool, shape), (count, names, reason) in groups.items()
        ]
        out.sort(key=lambda d: -d[2])
        return out

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
        self._end_failed(tr, now, TaskRunState.CANCELLED, message="cancelled")
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
                self._end_failed(tr, now, TaskRunState.CANCELLED, message="cancelled")
                cancelled += 1
        return cancelled

    # ------------------------------------------------------------------ retention

    def prune(self, ended_before: float) -> list[str]:
        """Forget finished flow runs that ended before ``ended_before`` (epoch seconds).

        Returns:
            The ids of the pruned flow runs (also reported in the next Changes).
        """
        pruned = [f.id for f in self.flows.values() if f.terminal and f.ended_at < ended_before]
        for flow_run_id in pruned:
            flow = self.flows.pop(flow_run_id)
            if flow.idempotency_key:
                self.idempotency.pop(flow.idempotency_key, None)
            for node in flow.nodes:
                for tr in node.children:
                    self.task_runs.pop(tr.id, None)
        self._changes.pruned.extend(pruned)
        return pruned

    # -------------------------------------------------------------------- restore

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
        self._orphans_due = now + self.lease_ttl_s
        # Judge queued task runs once workers had one TTL to reconnect; the
        # unschedulable timeout then runs from there.
        self._recheck_due = self._orphans_due
        self._changes = self._empty_changes()

    def _restore_flow(self, stored: RestoredFlow) -> None:
        records = _validate_and_link(stored.nodes, stored.output_node)
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
            tr.state = TaskRunState(row.state)
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
                node.failed = any(tr.state in _FAILED_STATES for tr in node.children)
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

    def _fits_now(self, node: NodeRecord) -> bool:
        """Whether some connected worker can run the node (cached per fleet version)."""
        if node.fits_version == self._fleet_version:
            return True
        if self._unschedulable_reason(node):
            return False
        node.fits_version = self._fleet_version
        return True

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

    def _enqueue(self, tr: TaskRun) -> None:
        node = tr.node
        by_node = self.ready.get(node.task_name)
        if by_node is None:
            by_node = self.ready[node.task_name] = {}
        key = (tr.flow.id, node.index)
        lane = by_node.get(key)
        if lane is None:
            lane = by_node[key] = Lane(tr.flow, node)
        lane.queue.append(tr)

    def _report_unschedulable(
        self, flow: FlowRun, node: NodeRecord, now: float, reason: str, tr: TaskRun | None
    ) -> None:
        node.unschedulable_reported = True
        key = (flow.id, node.index)
        since = self._unschedulable[key][1] if key in self._unschedulable else now
        self._unschedulable[key] = (node, since, reason)
        if tr is None:
            self._event(flow, EventKind.TASK_RUN_UNSCHEDULABLE, now, node=node, message=reason)
        else:
            self._event(flow, EventKind.TASK_RUN_UNSCHEDULABLE, now, tr=tr, message=reason)

    def _unschedulable_reason(self, node: NodeRecord) -> str:
        offering = [
            w
            for w in self.workers.values()
            if node.task_name in w.task_names and node.pool in w.pools
        ]
        if not offering:
            where = "" if node.pool == "default" else f" in pool {node.pool!r}"
            return f"no connected worker offers task {node.task_name!r}{where}"
        for worker in offering:
            if all(worker.capacity.get(r, 0.0) + _EPS >= a for r, a in node.resources.items()):
                return ""
        parts = []
        for resource, amount in sorted(node.resources.items()):
            largest = max(w.capacity.get(resource, 0.0) for w in offering)
            if largest + _EPS < amount:
                parts.append(f"needs {resource}={amount:g}; the largest worker offers {largest:g}")
        return "; ".join(parts)

    def _recheck_unschedulable(self, now: float) -> None:
        """After the fleet changed: clear nodes that fit now, report ones that no longer do."""
        for key, (node, _, reported) in list(self._unschedulable.items()):
            reason = self._unschedulable_reason(node)
            if reason == "":
                node.unschedulable_reported = False
                del self._unschedulable[key]
            elif reason != reported:  # still stuck, for a new reason: say so
                self._report_unschedulable(self.flows[key[0]], node, now, reason, None)
        for by_node in self.ready.values():
            for lane in by_node.values():
                node = lane.node
                if node.unschedulable_reported or not node.counts[TaskRunState.SCHEDULED]:
                    continue
                reason = self._unschedulable_reason(node)
                if reason:
                    self._report_unschedulable(lane.flow, node, now, reason, None)

    def _fail_unschedulable(self, now: float) -> None:
        """Fail queued task runs that no worker could run for unschedulable_timeout_s."""
        timeout = self.unschedulable_timeout_s
        for key, (node, since, _) in list(self._unschedulable.items()):
            if now - since < timeout:
                continue
            del self._unschedulable[key]
            reason = self._unschedulable_reason(node)
            if not reason:
                node.unschedulable_reported = False
                continue
            message = f"unschedulable for {timeout:g} s: {reason}"
            node.unschedulable_reported = False  # children ready later are judged again
            for tr in node.children:
                if tr.state == TaskRunState.SCHEDULED:
                    tr.error = None
                    self._end_failed(tr, now, TaskRunState.FAILED, message=message)

    def _grant(
        self, tr: TaskRun, worker: WorkerRecord, now: float, lane: Lane, batch_id: int = 0
    ) -> LeaseGrant:
        args = self._resolve_args(tr)  # before any state changes
        if lane.reserved_worker not in (None, worker.worker_id):
            self._unreserve(lane)  # its task run starts elsewhere: stop clearing that worker
        self._set_state(tr, TaskRunState.RUNNING)
        tr.worker_id = worker.worker_id
        tr.leased_at = now
        worker.running[tr.id] = tr
        self._take_slots(tr.node, +1)
        allocated = worker.allocated
        for resource, amount in tr.node.resources.items():
            allocated[resource] = allocated.get(resource, 0.0) + amount
        self._task_event(tr, EventKind.TASK_RUN_STARTED, now, worker.worker_id)
        return LeaseGrant(tr, tr.attempt, args, batch_id)

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
        if tr.worker_id is None:
            return
        batch = tr.batch
        if batch is not None:
            tr.batch = None
            batch.remaining -= 1
            if batch.remaining > 0:  # the slot stays with the batch's other members
                worker = self.workers.get(tr.worker_id)
                if worker is not None:
                    worker.running.pop(tr.id, None)
                tr.worker_id = None
                return
        self._take_slots(tr.node, -1)
        self._work_added = True
        worker = self.workers.get(tr.worker_id)
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

    # ------------------------------------------------------------------- queries

    def flow_result(self, flow: FlowRun) -> bytes | list[bytes] | None:
        """The completed flow's result: pickled bytes or a list of them."""
        if flow.state != FlowRunState.COMPLETED:
            return None
        if flow.output_node is None:
            return flow.output_literal
        return whole_value(flow.nodes[flow.output_node])


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


def _result_size(outcome: Outcome) -> int:
    if outcome.items is not None:
        return sum(len(item) for item in outcome.items)
    return len(outcome.value or b"")


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


def _could_hold(worker: WorkerRecord, shape: tuple) -> bool:
    """Whether the worker could run this shape at all, once nothing else runs on it."""
    capacity = worker.capacity
    return all(capacity.get(resource, 0.0) + _EPS >= amount for resource, amount in shape)


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
        if not 0 <= spec.jitter <= 1:
            raise InvalidFlowSpec(f"{where}.retry.jitter = {spec.jitter}: must be in [0, 1]")
        for field, value in (
            ("retry_delay_seconds", spec.retry_delay_s),
            ("timeout_seconds", spec.timeout_s),
            ("retry.backoff", spec.backoff),
            ("retry.max_delay_seconds", spec.max_delay_s),
            *(("retry.retry_delays_seconds", d) for d in spec.retry_delays_s),
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
        record.policy = RetryPolicy(
            retries=spec.retries,
            delay_s=spec.retry_delay_s,
            delays_s=tuple(spec.retry_delays_s),
            backoff=spec.backoff or 1.0,
            max_delay_s=spec.max_delay_s,
            jitter=spec.jitter,
        )
        record.tags = tuple(spec.tags)
        record.concurrency_limit = spec.concurrency_limit
        record.pool = spec.pool or "default"
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
            if arg.mapped and arg.kind not in (ArgKind.LITERAL_ITEMS, ArgKind.NODE):
                raise InvalidFlowSpec(
                    f"{field}.mapped: a mapped argument is literal_items or one upstream node"
                )
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
