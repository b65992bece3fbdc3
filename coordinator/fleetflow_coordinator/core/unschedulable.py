"""Unschedulable bookkeeping and demand: task runs no connected worker can run, and why.

Owns the judgement of whether some connected worker could ever run a node
(it offers the task, serves its pool, and is large enough), the
``TASK_RUN_UNSCHEDULABLE`` reports with their reason, re-judging when the
fleet changes, failing what stayed unschedulable past
``unschedulable_timeout_s``, and the demand summary per pool and resource
shape (:meth:`UnschedulableMixin.demand`). See docs/architecture.md,
"Unschedulable requests" and "Demand signal".
"""

from __future__ import annotations

import itertools

from fleetflow_coordinator.core.model import (
    EPS,
    EventKind,
    FlowRun,
    NodeRecord,
    TaskRun,
    TaskRunState,
)
from fleetflow_coordinator.core.table import Stimulus
from fleetflow_coordinator.core.versions import runs_version

__all__ = ["UnschedulableMixin"]

#: How many workers the module-name hint of an unschedulable reason looks at.
ALIAS_SCAN_WORKERS = 16


class UnschedulableMixin:
    """Unschedulable judgement, reports, timeouts and demand of the :class:`Scheduler`.

    Owns these Scheduler attributes: ``_unschedulable``, ``_recheck_due``,
    ``unschedulable_timeout_s`` and each node's ``unschedulable_reported`` and
    ``fits_version``; reads ``workers``, ``ready`` and ``_fleet_version``.
    """

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

    def limit_waits(self) -> dict[tuple[str, tuple], list[str]]:
        """Full concurrency limits that queued task runs wait on, per demand group.

        Returns:
            ``{(pool, shape): ["warehouse (2/2 running)", ...]}`` with the
            groups of :meth:`demand`; a group whose limits have room is absent.
        """
        out: dict[tuple[str, tuple], list[str]] = {}
        held = self.slots_held
        for by_node in self.ready.values():
            for lane in by_node.values():
                node = lane.node
                if not node.counts[TaskRunState.SCHEDULED]:
                    continue
                for key, limit in self._slot_keys(node):
                    running = held.get(key, 0)
                    if running < limit:
                        continue
                    kind, name = key
                    label = name if kind == "tag" else f"task {name}'s concurrency_limit"
                    labels = out.setdefault((node.pool, node.shape[1]), [])
                    text = f"{label} ({running}/{limit} running)"
                    if text not in labels:
                        labels.append(text)
        return out

    def limits_view(self) -> list[tuple[str, int, int, int]]:
        """Every named limit: ``[(tag, limit, running now, task runs queued with the tag)]``."""
        waiting: dict[str, int] = {}
        for by_node in self.ready.values():
            for lane in by_node.values():
                node = lane.node
                for tag in node.tags:
                    if tag in self.limits:
                        waiting[tag] = waiting.get(tag, 0) + node.counts[TaskRunState.SCHEDULED]
        return [
            (tag, limit, self.slots_held.get(("tag", tag), 0), waiting.get(tag, 0))
            for tag, limit in sorted(self.limits.items())
        ]

    def unschedulable_reasons(self, flow_run_id: str) -> dict[int, str]:
        """``{node index: reason}`` for the flow run's nodes reported unschedulable now.

        O(nodes reported unschedulable fleet-wide), which is small.
        """
        return {
            node.index: reason
            for (flow_id, _), (_, node, _, reason) in self._unschedulable.items()
            if flow_id == flow_run_id and not node.terminal
        }

    def _fits_now(self, node: NodeRecord) -> bool:
        """Whether some connected worker can run the node (cached per fleet version)."""
        if node.fits_version == self._fleet_version:
            return True
        if self._unschedulable_reason(node):
            return False
        node.fits_version = self._fleet_version
        return True

    def _report_unschedulable(
        self, flow: FlowRun, node: NodeRecord, now: float, reason: str, tr: TaskRun | None
    ) -> None:
        node.unschedulable_reported = True
        key = (flow.id, node.index)
        entry = self._unschedulable.get(key)
        since = entry[2] if entry is not None else now
        self._unschedulable[key] = (flow, node, since, reason)
        if tr is None:
            self._emit(flow, EventKind.TASK_RUN_UNSCHEDULABLE, now, node=node, message=reason)
        else:
            self._emit(flow, EventKind.TASK_RUN_UNSCHEDULABLE, now, tr=tr, message=reason)

    def _forget_unschedulable(self, flow: FlowRun) -> None:
        """A flow run ended (or was pruned): its nodes wait for nothing any more."""
        entries = self._unschedulable
        if entries:
            for node in flow.nodes:
                if node.unschedulable_reported:
                    node.unschedulable_reported = False
                    entries.pop((flow.id, node.index), None)

    def _unschedulable_reason(self, node: NodeRecord) -> str:
        offering = [
            w
            for w in self.workers.values()
            if node.task_name in w.task_names and node.pool in w.pools
        ]
        if not offering:
            where = "" if node.pool == "default" else f" in pool {node.pool!r}"
            return f"no connected worker offers task {node.task_name!r}{where}{self._alias(node)}"
        matching = [w for w in offering if runs_version(w, node)]
        if not matching:
            theirs = sorted({w.task_fingerprints.get(node.task_name, "") for w in offering})
            return (
                f"workers run another version of task {node.task_name!r}: it was submitted "
                f"with fingerprint {node.fingerprint}, connected workers run {', '.join(theirs)} "
                "(start workers on the submitted code, or resubmit from the workers' code)"
            )
        offering = matching
        for worker in offering:
            if all(worker.capacity.get(r, 0.0) + EPS >= a for r, a in node.resources.items()):
                return ""
        parts = []
        for resource, amount in sorted(node.resources.items()):
            largest = max(w.capacity.get(resource, 0.0) for w in offering)
            if largest + EPS < amount:
                parts.append(f"needs {resource}={amount:g}; the largest worker offers {largest:g}")
        return "; ".join(parts)

    def _alias(self, node: NodeRecord) -> str:
        """A hint when workers offer the same function under another module name.

        Best effort and bounded: looks at the first :data:`ALIAS_SCAN_WORKERS`
        workers only, since reasons are recomputed whenever the fleet changes.
        """
        _, sep, qualname = node.task_name.rpartition(":")
        if not sep:
            return ""
        for worker in itertools.islice(self.workers.values(), ALIAS_SCAN_WORKERS):
            for name in worker.task_names:
                if name != node.task_name and name.endswith(f":{qualname}"):
                    return (
                        f" (workers offer {name!r}: clients and workers must import the "
                        "module under the same name)"
                    )
        return ""

    def _recheck_unschedulable(self, now: float) -> None:
        """After the fleet changed: clear nodes that fit now, report ones that no longer do."""
        for key, (flow, node, _, reported) in list(self._unschedulable.items()):
            if node.terminal:  # nothing of it waits any more
                node.unschedulable_reported = False
                del self._unschedulable[key]
                continue
            reason = self._unschedulable_reason(node)
            if reason == "":
                node.unschedulable_reported = False
                del self._unschedulable[key]
            elif reason != reported:  # still stuck, for a new reason: say so
                self._report_unschedulable(flow, node, now, reason, None)
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
        for key, (_, node, since, _) in list(self._unschedulable.items()):
            if now - since < timeout and not node.terminal:
                continue
            del self._unschedulable[key]
            if node.terminal:
                node.unschedulable_reported = False
                continue
            reason = self._unschedulable_reason(node)
            if not reason:
                node.unschedulable_reported = False
                continue
            message = f"unschedulable for {timeout:g} s: {reason}"
            node.unschedulable_reported = False  # children ready later are judged again
            for tr in node.children:
                if tr.state == TaskRunState.SCHEDULED:
                    tr.error = None
                    self._end_failed(tr, now, Stimulus.FAIL, message=message)
