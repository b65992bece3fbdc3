"""Worker membership and liveness: registration, heartbeats, hand-backs and loss.

Owns what the coordinator knows of each worker (capacity, offered tasks,
pools, last sign of life, what it runs), re-attaching attempts a worker still
holds after a coordinator restart, the heartbeat's reconciliation (attempts to
cancel, leases lost in transit), orderly hand-backs from a draining worker,
and declaring a worker lost. See docs/architecture.md, "Worker loss".
"""

from __future__ import annotations

import math

from fleetflow_coordinator.core.model import EventKind, TaskRun, TaskRunState, WorkerRecord
from fleetflow_coordinator.core.table import Stimulus

__all__ = ["WorkersMixin"]


class WorkersMixin:
    """Worker registration, heartbeats and loss of the :class:`Scheduler`.

    Owns these Scheduler attributes: ``workers`` and ``_fleet_version`` (grows
    whenever what fits may change); takes re-attached attempts out of
    ``_orphans``.
    """

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
        task_fingerprints: dict[str, str] | None = None,
        any_version: bool = False,
    ) -> WorkerRecord:
        """Add a worker, or refresh one that registers again.

        A worker that registers again keeps its running task runs (it may have
        lost its connection only); its capacity and task names are replaced.
        ``running`` (``[(task_run_id, attempt)]``) re-attaches attempts the
        worker still holds, e.g. after a coordinator restart; attempts that are
        not current are ignored here and cancelled by the next heartbeat.
        ``task_fingerprints`` (``{task name: fingerprint}``) is the code each
        task runs there; only nodes of the same version are leased to it
        unless ``any_version`` (see :func:`~fleetflow_coordinator.core.versions.runs_version`).
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
        worker.task_fingerprints = dict(task_fingerprints or {})
        worker.any_version = any_version
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
            worker.slots += 1  # re-attached one by one: no batch survives a restart
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
        capacity: dict[str, float] | None = None,
    ) -> tuple[bool, list[tuple[int, int]]]:
        """Renew a worker's leases and reconcile what it runs.

        Args:
            worker_id: The worker's id.
            running: ``[(task_run_id, attempt)]`` the worker is running now.
            now: Current time, seconds since the epoch.
            cpu_percent: Machine CPU use, percent (0-100).
            memory_available: Available memory, bytes.
            capacity: The worker's capacity now, when it changed (an executor
                whose cluster grew or shrank); None: unchanged. A capacity
                below what its running attempts hold leases nothing more
                until they end.

        Returns:
            ``(known, cancel)``: known is False for an unknown worker (it must
            register again); cancel lists attempts the worker should stop
            because they are no longer its to run.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            return False, []
        worker.last_seen = now
        if capacity is not None and capacity != worker.capacity:
            worker.capacity = dict(capacity)
            self._fleet_version += 1
            self._work_added = True  # more room may let a waiting long poll lease
            self._recheck_unschedulable(now)
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
        lost = [
            tr
            for tr in worker.running.values()
            if tr.id not in reported and now - tr.leased_at > self.lease_ttl_s
        ]
        if lost:
            self._lose_attempts(lost, now, "lease lost in transit: the worker never started it")
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

    def release_leases(
        self,
        worker_id: str,
        released: list[tuple[int, int]],
        now: float,
        why: str = "handed back by a draining worker",
    ) -> int:
        """A draining worker hands back attempts it stopped: re-queue them at once.

        A hand-back is orderly, so it uses up neither the task's retries nor its
        infrastructure budget. Attempts that are not current are ignored. The
        edge also hands back leases it granted but could not send (``why`` is
        then the event's message).

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
            self._requeue_uncounted(tr, now, worker_id, why)
            requeued += 1
        return requeued

    def lose_worker(self, worker_id: str, now: float, reason: str) -> None:
        """Forget a worker and re-queue every attempt it held as a new attempt.

        Each attempt in a slot of its own counts as an infrastructure failure;
        a lease batch counts one, not one per member: its members run one at a
        time, in lease order, so at most one was running and those behind it
        had not started. The one charged is the batch's first member still
        held (the running one, or one ahead of it whose outcome had not
        arrived); the others are re-queued without counting, as a hand-back
        is. Every member of a lost batch is leased alone on its next attempt,
        so a member that kills its worker is charged itself the next time and
        gives up after ``max_infra_failures`` as any other.
        """
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        self._fleet_version += 1
        lane = self._reservations.pop(worker_id, None)
        if lane is not None:
            lane.reserved_worker = None
        self._lose_attempts(list(worker.running.values()), now, reason)
        self._recheck_unschedulable(now)

    def _lose_attempts(self, attempts: list[TaskRun], now: float, reason: str) -> None:
        """Re-queue ``attempts`` (in lease order) as new attempts; a batch counts once.

        See :meth:`lose_worker` for who is charged an infrastructure failure.
        """
        batches: dict[int, int] = {}  # batch id -> the member that counts
        for tr in attempts:
            batch = tr.batch
            if batch is None:
                self._lose_attempt(tr, now, reason)
                continue
            self._lease_alone.add(tr.id)
            first = batches.setdefault(batch.id, tr.id)
            if first == tr.id:
                self._lose_attempt(tr, now, reason)
                continue
            self._requeue_uncounted(
                tr, now, tr.worker_id or "",
                f"{reason}; behind task run {first} in its lease batch: not counted",
            )  # fmt: skip

    def _requeue_uncounted(self, tr: TaskRun, now: float, worker_id: str, message: str) -> None:
        """End ``tr``'s running attempt and queue the next, charging neither budget."""
        self._release(tr)
        self._emit(
            tr.flow, EventKind.TASK_RUN_LEASE_EXPIRED, now, tr=tr, worker_id=worker_id,
            message=message,
        )  # fmt: skip
        tr.attempt += 1
        self._schedule(tr, now, Stimulus.REQUEUE)
