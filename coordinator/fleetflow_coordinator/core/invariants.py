"""The scheduler's invariants, checked mechanically: :meth:`InvariantsMixin.validate_state`.

Owns the statement of what must always hold between two calls into the core:
counts agree with the task runs they count, terminal states and ended flow
runs stay final (nothing is logged after a flow run's terminal event), every
task run is reachable from its flow run and every queued one from a ready
lane, no worker holds more than the attempts it runs, slots held equal the
slots running attempts take, and the bookkeeping maps (unschedulable nodes,
reservations, orphans, retry timers, idempotency keys) point only at live
records. The core test harness calls it after every step, and so do the
property tests; it walks everything, so it is for tests (O(state) per call).
"""

from __future__ import annotations

from fleetflow_coordinator.core.model import (
    EPS,
    TERMINAL_TASK_STATES,
    FlowRunState,
    NodeRecord,
    TaskRunState,
)
from fleetflow_coordinator.core.table import FLOW_END_EVENTS, FLOW_END_STATES

__all__ = ["InvalidState", "InvariantsMixin"]


class InvalidState(AssertionError):
    """The scheduler's state breaks an invariant; the message lists each one broken."""


class InvariantsMixin:
    """:meth:`validate_state` for the :class:`Scheduler`; reads everything, changes nothing."""

    def validate_state(self, *, check_overcommit: bool = True) -> None:
        """Check every invariant of the scheduler's state.

        Args:
            check_overcommit: Also check that no worker's allocations (or slots) exceed
                its capacity. A worker that re-attached attempts after a
                restart (each batch member counted on its own) or registered
                again with less capacity may be over for a while; pass False
                where a test drives such cases.

        Raises:
            InvalidState: naming each broken invariant (up to 20).
        """
        problems: list[str] = []
        self._check_flows(problems)
        self._check_workers(problems, check_overcommit)
        self._check_bookkeeping(problems)
        if problems:
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise InvalidState("; ".join(problems[:20]) + more)

    def _check_flows(self, problems: list[str]) -> None:
        seen = 0
        for flow_id, flow in self.flows.items():
            where = f"flow run {flow_id}"
            if flow.id != flow_id:
                problems.append(f"{where}: keyed under another id")
            n_terminal_nodes = 0
            for node in flow.nodes:
                counts = [0] * len(node.counts)
                n_terminal = 0
                for i, tr in enumerate(node.children):
                    seen += 1
                    counts[tr.state] += 1
                    n_terminal += tr.state in TERMINAL_TASK_STATES
                    if tr.index != i or tr.node is not node or tr.flow is not flow:
                        problems.append(f"task run {tr.id}: not where its node lists it")
                    if self.task_runs.get(tr.id) is not tr:
                        problems.append(f"task run {tr.id}: unreachable by id")
                    if (tr.state == TaskRunState.RUNNING) != (tr.worker_id is not None):
                        problems.append(
                            f"task run {tr.id}: {tr.state.name} with worker {tr.worker_id}"
                        )
                    if tr.state != TaskRunState.RUNNING and tr.batch is not None:
                        problems.append(f"task run {tr.id}: {tr.state.name} still in a batch")
                if counts != node.counts:
                    problems.append(f"{where} node {node.index}: counts {node.counts} != {counts}")
                if node.expanded and n_terminal != node.n_terminal:
                    problems.append(f"{where} node {node.index}: n_terminal {node.n_terminal}")
                if node.expanded and node.terminal != (n_terminal == len(node.children)):
                    problems.append(f"{where} node {node.index}: terminal flag {node.terminal}")
                if not node.expanded and node.children:
                    problems.append(f"{where} node {node.index}: children before expanding")
                n_terminal_nodes += node.terminal
            if n_terminal_nodes != flow.n_terminal_nodes:
                problems.append(f"{where}: n_terminal_nodes {flow.n_terminal_nodes}")
            last = flow.events[-1] if len(flow.events) else None
            if flow.state == FlowRunState.RUNNING:
                if n_terminal_nodes == len(flow.nodes):
                    problems.append(f"{where}: every node ended but the run did not")
                if last is not None and last.kind in FLOW_END_EVENTS:
                    problems.append(f"{where}: RUNNING after its terminal event")
            else:
                if n_terminal_nodes != len(flow.nodes):
                    problems.append(f"{where}: {flow.state.name} with nodes still running")
                if last is None or FLOW_END_STATES.get(last.kind) != flow.state:
                    kind = last.kind.name if last is not None else None
                    problems.append(f"{where}: last event {kind} after its end")
            if flow.idempotency_key and self.idempotency.get(flow.idempotency_key) != flow_id:
                problems.append(f"{where}: idempotency key not indexed")
        if seen != len(self.task_runs):
            problems.append(f"{len(self.task_runs)} task runs by id, {seen} reachable from flows")

    def _check_workers(self, problems: list[str], check_overcommit: bool) -> None:
        held: dict[tuple[str, str], int] = {}
        for worker_id, worker in self.workers.items():
            expected: dict[str, float] = {}
            batches = set()
            slots = 0
            for tr_id, tr in worker.running.items():
                if tr.id != tr_id or tr.state != TaskRunState.RUNNING:
                    problems.append(f"worker {worker_id}: holds task run {tr_id} ({tr.state.name})")
                if tr.worker_id != worker_id:
                    problems.append(f"worker {worker_id}: holds {tr_id} leased to {tr.worker_id}")
                if tr.batch is not None:
                    if tr.batch.remaining < 1:
                        problems.append(f"worker {worker_id}: batch {tr.batch.id} is empty")
                    if tr.batch in batches:
                        continue  # a batch holds its resources and slots once
                    batches.add(tr.batch)
                slots += 1
                for resource, amount in tr.node.resources.items():
                    expected[resource] = expected.get(resource, 0.0) + amount
                for key in self._slot_keys_held(tr.node):
                    held[key] = held.get(key, 0) + 1
            if worker.slots != slots:
                problems.append(f"worker {worker_id}: {worker.slots} slots counted, {slots} held")
            if check_overcommit and slots > self.max_leases_per_worker:
                problems.append(f"worker {worker_id}: {slots} slots, over max_leases_per_worker")
            for resource in set(expected) | set(worker.allocated):
                want, have = expected.get(resource, 0.0), worker.allocated.get(resource, 0.0)
                if abs(want - have) > 1e-6:
                    problems.append(f"worker {worker_id}: {resource} allocated {have} != {want}")
                if check_overcommit and have > worker.capacity.get(resource, 0.0) + 1e-6 + EPS:
                    problems.append(f"worker {worker_id}: {resource} over-committed ({have})")
        # Attempts that were running at a restart hold their slots while their
        # workers have not re-attached them.
        for tr in self._orphans.values():
            worker = self.workers.get(tr.worker_id)
            if tr.state == TaskRunState.RUNNING and (worker is None or tr.id not in worker.running):
                for key in self._slot_keys_held(tr.node):
                    held[key] = held.get(key, 0) + 1
        for key in set(held) | {k for k, v in self.slots_held.items() if v}:
            if held.get(key, 0) != self.slots_held.get(key, 0):
                have = self.slots_held.get(key, 0)
                problems.append(f"slots {key}: held {have} != {held.get(key, 0)}")

    @staticmethod
    def _slot_keys_held(node: NodeRecord) -> list[tuple[str, str]]:
        keys = [("tag", tag) for tag in node.tags]
        if node.concurrency_limit:
            keys.append(("task", node.task_name))
        return keys

    def _check_bookkeeping(self, problems: list[str]) -> None:
        for (flow_id, index), (flow, node, _, _) in self._unschedulable.items():
            if self.flows.get(flow_id) is not flow or flow.state != FlowRunState.RUNNING:
                problems.append(f"unschedulable entry of ended or pruned flow run {flow_id}")
            elif flow.nodes[index] is not node or not node.unschedulable_reported:
                problems.append(f"unschedulable entry {flow_id}/{index} does not match its node")
        for worker_id, lane in self._reservations.items():
            if worker_id not in self.workers or lane.reserved_worker != worker_id:
                problems.append(f"reservation of worker {worker_id} is stale")
        timers = {(id(tr), attempt) for _, _, tr, attempt in self._timers}
        queued = set()
        for by_node in self.ready.values():
            for lane in by_node.values():
                queued.update(id(tr) for tr in lane.queue)
        for tr in self.task_runs.values():
            if tr.state == TaskRunState.AWAITING_RETRY and (id(tr), tr.attempt) not in timers:
                problems.append(f"task run {tr.id}: awaiting a retry with no timer")
            if tr.state == TaskRunState.SCHEDULED and id(tr) not in queued:
                problems.append(f"task run {tr.id}: SCHEDULED but in no ready lane")
        for task_run_id in self._lease_alone:
            if task_run_id not in self.task_runs:
                problems.append(f"task run {task_run_id} to lease alone is unknown")
        for key, flow_id in self.idempotency.items():
            if flow_id not in self.flows:
                problems.append(f"idempotency key {key!r} of a pruned flow run")
