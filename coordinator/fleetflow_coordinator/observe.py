"""Read-only views of the coordinator's state: the dashboard's snapshots and the metrics' inputs.

Nothing here changes the core. :class:`Observer` keeps one
:class:`~fleetflow_coordinator.observe_fold.FlowDigest` per flow run and folds
each one's new events (:mod:`fleetflow_coordinator.observe_fold`):
:meth:`Observer.catch_up` reads only the events appended since its last call,
at most a budget of them per call, so neither a request nor a fold ever walks
a flow run's task runs. The JSON shapes are built by
:mod:`fleetflow_coordinator.observe_views`; building a snapshot costs
O(flow runs shown + nodes + workers). The names of both modules stay
importable from here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from fleetflow_coordinator.core import FlowRunState, Scheduler
from fleetflow_coordinator.core.model import FlowRun
from fleetflow_coordinator.observe_fold import (
    FOLD_BUDGET,
    MAX_FAILURES,
    TIME_STATES,
    TOP_SLOWEST,
    TRACEBACK_CHARS,
    AttemptLog,
    EventSink,
    FlowDigest,
    NullSink,
)
from fleetflow_coordinator.observe_views import (
    flow_detail,
    flow_summary,
    node_view,
    recent_rate,
    series,
    shape_label,
    worker_view,
)
from fleetflow_coordinator.usage import UsageBook

__all__ = [
    "AttemptLog",
    "Observer",
    "FlowDigest",
    "EventSink",
    "flow_summary",
    "flow_detail",
    "node_view",
    "worker_view",
    "shape_label",
    "series",
    "recent_rate",
    "TIME_STATES",
    "FOLD_BUDGET",
    "MAX_FAILURES",
    "TOP_SLOWEST",
    "TRACEBACK_CHARS",
]

#: Seconds of fleet-wide throughput kept.
FLEET_WINDOW_S = 600
#: Flow runs listed in a snapshot, newest first.
FLOW_LIST_LIMIT = 100


class Observer:
    """Folds every flow run's new events and builds the dashboard's snapshots.

    Args:
        core: Returns the scheduler to read (called on every use, so the edge
            may replace it, e.g. after recovery from a store).
        clock: Current time, seconds since the epoch.
        sink: Told about every folded event (the metrics); optional.
        usage: Measured usage per task (:mod:`fleetflow_coordinator.usage`),
            shown with each flow run; optional.
    """

    def __init__(
        self,
        core: Callable[[], Scheduler],
        clock: Callable[[], float],
        sink: EventSink | None = None,
        usage: UsageBook | None = None,
    ) -> None:
        self._core = core
        self.clock = clock
        self.sink: EventSink = sink or NullSink()
        self.usage = usage
        #: {flow_run_id: FlowDigest}
        self.digests: dict[str, FlowDigest] = {}
        #: {second since epoch: [completed, failed]}, the last FLEET_WINDOW_S seconds.
        self.fleet_buckets: dict[int, list[int]] = {}

    @property
    def core(self) -> Scheduler:
        """The scheduler being observed."""
        return self._core()

    def catch_up(self, budget: int = FOLD_BUDGET) -> int:
        """Fold events appended since the last call, at most ``budget``; return how many."""
        core = self.core
        digests = self.digests
        folded = 0
        for flow_run_id, flow in core.flows.items():
            digest = digests.get(flow_run_id)
            if digest is None:
                digest = digests[flow_run_id] = FlowDigest(flow_run_id)
            if digest.cursor < len(flow.events) and folded < budget:
                folded += digest.fold(flow, budget - folded, self.sink, self._fleet_finish)
        if len(digests) > len(core.flows):
            for gone in [f for f in digests if f not in core.flows]:
                del digests[gone]
        self._prune_fleet()
        return folded

    def fold_flow(self, flow_run_id: str, budget: int = FOLD_BUDGET) -> bool:
        """Fold up to ``budget`` new events of one flow run; True once it is caught up."""
        flow = self.core.flows.get(flow_run_id)
        if flow is None:
            return True
        digest = self.digests.get(flow_run_id)
        if digest is None:
            digest = self.digests[flow_run_id] = FlowDigest(flow_run_id)
        digest.fold(flow, budget, self.sink, self._fleet_finish)
        flows = self.core.flows
        if len(self.digests) > len(flows):
            for gone in [f for f in self.digests if f not in flows]:
                del self.digests[gone]
        return digest.cursor >= len(flow.events)

    def _fleet_finish(self, second: int, failed: bool) -> None:
        bucket = self.fleet_buckets.get(second)
        if bucket is None:
            bucket = self.fleet_buckets[second] = [0, 0]
        bucket[1 if failed else 0] += 1

    def _prune_fleet(self) -> None:
        if len(self.fleet_buckets) > FLEET_WINDOW_S:
            horizon = int(self.clock()) - FLEET_WINDOW_S
            for second in [s for s in self.fleet_buckets if s < horizon]:
                del self.fleet_buckets[second]

    def digest(self, flow_run_id: str) -> FlowDigest:
        """The digest of a flow run (empty if not folded yet)."""
        return self.digests.get(flow_run_id) or FlowDigest()

    # ------------------------------------------------------------- snapshots

    def pick_flow(self, requested: str | None) -> FlowRun | None:
        """The flow run to show: the requested one, else the newest running, else the newest."""
        flows = self.core.flows
        if requested:
            return flows.get(requested)
        newest = None
        for flow in itertools.islice(reversed(flows.values()), FLOW_LIST_LIMIT):
            if newest is None:
                newest = flow
            if flow.state == FlowRunState.RUNNING:
                return flow
        return newest

    def overview(self, flow_run_id: str | None = None) -> dict[str, Any]:
        """Everything one dashboard update shows, as JSON-ready data.

        Args:
            flow_run_id: The flow run to detail; None picks one (see :meth:`pick_flow`).
        """
        core = self.core
        now = self.clock()
        flows = core.flows
        by_state: dict[str, int] = {}
        for flow in flows.values():
            name = flow.state.name
            by_state[name] = by_state.get(name, 0) + 1
        listed = [
            flow_summary(f, now)
            for f in itertools.islice(reversed(flows.values()), FLOW_LIST_LIMIT)
        ]
        selected = self.pick_flow(flow_run_id)
        gpus = self.usage.worker_gpus.of if self.usage is not None else (lambda _: ())
        workers = [worker_view(w, now, gpus(w.worker_id)) for w in core.workers.values()]
        return {
            "fleet": {
                "flow_runs": by_state,
                "flow_runs_total": len(flows),
                "workers": len(workers),
                "running": sum(w["running"] for w in workers),
                "throughput": series(self.fleet_buckets, now - 119, now, points=120),
                "rate_per_s": recent_rate(self.fleet_buckets, now),
            },
            "flows": listed,
            "selected": selected.id if selected is not None else None,
            "requested": flow_run_id,
            "flow": (
                flow_detail(
                    selected,
                    self.digest(selected.id),
                    now,
                    core.workers.values(),
                    usage=self.usage,
                )
                if selected is not None
                else None
            ),
            "workers": workers,
        }
