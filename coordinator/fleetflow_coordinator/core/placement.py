"""Placement and leasing: which ready task run goes to which worker, and what it holds there.

Owns the ready lanes (:class:`Lane`, one FIFO per (flow run, node)), the
lease call itself (priority levels, round robin across lanes, fit checks),
lease batches and their sizing, reservations for starving large requests,
named and per-task concurrency slots, and the bookkeeping of what a granted
attempt holds (resources on its worker, slots) until :meth:`_release` gives it
back. See docs/architecture.md, "Placement".

:class:`PlacementMixin` is one of the mixins ``Scheduler`` is composed from;
its methods read and write the Scheduler's attributes listed in its
docstring.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

from fleetflow_coordinator.core.messages import LeaseGrant
from fleetflow_coordinator.core.model import (
    EPS,
    ArgKind,
    FlowRun,
    NodeRecord,
    SlotBatch,
    TaskRun,
    TaskRunState,
    WorkerRecord,
)
from fleetflow_coordinator.core.table import Stimulus
from fleetflow_coordinator.core.versions import runs_version

_LEASE = Stimulus.LEASE
_LITERAL = ArgKind.LITERAL
_LITERAL_ITEMS = ArgKind.LITERAL_ITEMS
_NODES = ArgKind.NODES

__all__ = [
    "BATCH_TARGET_S",
    "LEASING_WINDOW_S",
    "MAX_BATCH",
    "MAX_LEASES_PER_WORKER",
    "MAX_OVERTAKES",
    "Lane",
    "PlacementMixin",
    "whole_value",
]

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

#: The most slots (allocations of running attempts; a batch holds one) a worker
#: holds at once, whatever its attempts request: the bound on task runs that
#: request no resources (``resources={}`` or ``{"cpu": 0}``), which capacity
#: alone does not limit. The same as a worker's default ``max_concurrency``, so
#: a worker at its defaults never meets it (``Scheduler(max_leases_per_worker=)``,
#: the coordinator setting of that name).
MAX_LEASES_PER_WORKER = 1000

#: A worker that asked for leases this recently (seconds) shares in a lane's
#: tail when batches are sized; workers that never lease (or stopped) do not.
LEASING_WINDOW_S = 2.0


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


class PlacementMixin:
    """Leasing, lanes, batches, reservations and slots of the :class:`Scheduler`.

    Owns these Scheduler attributes: ``ready`` (the lanes), ``_reservations``,
    ``limits``, ``slots_held``, ``_rr``, ``_batch_seq``, ``_max_batch``,
    ``_slots``, ``_leasing`` and ``_leasing_at``, each worker's ``slots``
    (bounded by ``max_leases_per_worker``, which it reads), and the attempt deadlines of
    leased attempts (``_attempt_deadlines``, ``_deadlines_compact_at``,
    ``attempts_expired``; reads ``attempt_grace_s``); reads ``workers``.
    """

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
            if (
                tr is None
                or reserved.node.pool not in worker.pools
                or not runs_version(worker, reserved.node)
            ):
                self._unreserve(reserved)
            elif self._room_for(worker, reserved.node.shape[1]) > 0 and self._slot_free(
                reserved.node
            ):
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
                lanes.extend(
                    lane
                    for lane in by_node.values()
                    if lane.node.pool in pools and runs_version(worker, lane.node)
                )
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
            and self._room_for(worker, lane.node.shape[1]) <= 0
            and _could_hold(worker, lane.node.shape[1])
        ]
        while lanes and self._slots < max_task_runs:
            open_lanes = []
            for lane in lanes:
                tr = self._next_ready(lane)
                if tr is None:
                    continue
                node = lane.node
                if not self._slot_free(node) or self._room_for(worker, node.shape[1]) <= 0:
                    continue  # this lane waits; others may still fit
                lane.queue.popleft()
                size = self._batch_size(lane) if self._max_batch > 1 else 1
                if size > 1 and self._lease_alone and tr.id in self._lease_alone:
                    size = 1
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
        if not 0.0 < mean < BATCH_TARGET_S / 2:  # also NaN: whatever a worker sent
            return 1
        # Compared before dividing: a tiny mean (5e-324) must not overflow int().
        if mean * self._max_batch <= BATCH_TARGET_S:
            size = self._max_batch
        else:
            size = int(BATCH_TARGET_S / mean)
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
        alone = self._lease_alone
        while queue and len(members) < size:
            tr = queue.popleft()
            if tr.state == TaskRunState.SCHEDULED:
                if alone and tr.id in alone:
                    queue.appendleft(tr)  # it heads the next grant, on its own
                    break
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
        timed = head.node.timeout_s > 0
        for position, tr in enumerate(members[1:], start=2):
            args = self._resolve_args(tr)
            tr.worker_id = worker_id
            tr.leased_at = now
            if timed:
                self._watch_deadline(tr, now, position)
            tr.batch = batch
            running[tr.id] = tr
            self._transition(tr, _LEASE, now, worker_id)
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

    def _grant(
        self, tr: TaskRun, worker: WorkerRecord, now: float, lane: Lane, batch_id: int = 0
    ) -> LeaseGrant:
        args = self._resolve_args(tr)  # before any state changes
        if self._lease_alone:
            self._lease_alone.discard(tr.id)
        if lane.reserved_worker not in (None, worker.worker_id):
            self._unreserve(lane)  # its task run starts elsewhere: stop clearing that worker
        tr.worker_id = worker.worker_id
        tr.leased_at = now
        if tr.node.timeout_s > 0:
            self._watch_deadline(tr, now)
        worker.running[tr.id] = tr
        worker.slots += 1
        self._take_slots(tr.node, +1)
        allocated = worker.allocated
        for resource, amount in tr.node.resources.items():
            allocated[resource] = allocated.get(resource, 0.0) + amount
        self._transition(tr, _LEASE, now, worker.worker_id)
        return LeaseGrant(tr, tr.attempt, args, batch_id)

    def _room_for(self, worker: WorkerRecord, shape: tuple) -> int:
        """How many more slots of this resource shape the worker may hold now."""
        return min(_room_for(worker, shape), self.max_leases_per_worker - worker.slots)

    def _resolve_args(self, tr: TaskRun) -> list[tuple[str, bytes | list[bytes]]]:
        nodes = tr.flow.nodes
        i = tr.index
        out: list[tuple[str, bytes | list[bytes]]] = []
        for arg in tr.node.args:
            kind = arg.kind
            if kind == _LITERAL:  # module constants: an enum member's lookup costs more
                out.append((arg.name, arg.payload))
            elif kind == _LITERAL_ITEMS:
                out.append((arg.name, arg.payload[i]))
            elif kind == _NODES:
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
            worker.slots -= 1
            allocated = worker.allocated
            for resource, amount in tr.node.resources.items():
                left = allocated.get(resource, 0.0) - amount
                allocated[resource] = 0.0 if left < EPS else left
            self._work_added = True  # freed capacity may let a waiting long poll lease
        tr.worker_id = None

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


def whole_value(node: NodeRecord) -> Any:
    """A completed node's whole result as the worker should receive it.

    Opaque to the core: pickled bytes or a reference to the result store (one
    value), a list of those (a map), or a plain node's split items (a list of
    bytes, or a stored list that supports ``len`` and indexing).
    """
    if node.is_map:
        return [tr.result or b"" for tr in node.children]
    child = node.children[0]
    if child.items is not None:
        return child.items
    return child.result or b""


def _whole_single(node: NodeRecord) -> Any:
    value = whole_value(node)
    assert not isinstance(value, list), "validated at submission: gathered nodes are plain"
    return value


def _room_for(worker: WorkerRecord, shape: tuple) -> int:
    """How many task runs of this resource shape still fit in the worker's capacity.

    A shape with no positive amount fits any number of times (1,000,000 here);
    :meth:`PlacementMixin._room_for` bounds that by the worker's slots.
    """
    room = math.inf
    capacity = worker.capacity
    allocated = worker.allocated
    for resource, amount in shape:
        if amount <= 0:
            continue
        free = capacity.get(resource, 0.0) - allocated.get(resource, 0.0)
        room = min(room, math.floor((free + EPS) / amount))
        if room <= 0:
            return 0
    return 1_000_000 if room == math.inf else int(room)


def _could_hold(worker: WorkerRecord, shape: tuple) -> bool:
    """Whether the worker could run this shape at all, once nothing else runs on it."""
    capacity = worker.capacity
    return all(capacity.get(resource, 0.0) + EPS >= amount for resource, amount in shape)
