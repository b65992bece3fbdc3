"""The dashboard's JSON views: flow runs, nodes, workers and throughput series as plain data.

Pure functions of the core's records, a :class:`~fleetflow_coordinator.observe_fold.FlowDigest`
and the time; each costs O(nodes) or O(workers), never O(task runs).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any

from fleetflow_coordinator.core import TaskRunState
from fleetflow_coordinator.core.model import FlowRun, NodeRecord, WorkerRecord
from fleetflow_coordinator.core.queries import node_counts
from fleetflow_coordinator.core.versions import runs_version
from fleetflow_coordinator.observe_fold import TRACEBACK_CHARS, FlowDigest
from fleetflow_coordinator.usage import UsageBook

__all__ = [
    "flow_summary",
    "flow_detail",
    "node_view",
    "worker_view",
    "shape_label",
    "series",
    "recent_rate",
]

#: Longest-running attempts shown per flow run.
TOP_RUNNING = 5
#: Points in a throughput series.
SERIES_POINTS = 120
#: Shortest time axis of a running flow run's throughput chart, seconds.
MIN_SERIES_S = 60

_STATE_NAMES = {int(s): s.name.lower() for s in TaskRunState}
_FINISHED = (
    TaskRunState.COMPLETED,
    TaskRunState.FAILED,
    TaskRunState.UPSTREAM_FAILED,
    TaskRunState.CANCELLED,
    TaskRunState.TIMED_OUT,
)


def _finished(counts: list[int]) -> int:
    return sum(counts[s] for s in _FINISHED)


def flow_summary(flow: FlowRun, now: float) -> dict[str, Any]:
    """One row of the flow run list: state, progress and duration (O(nodes)).

    ``failed`` counts failed and timed-out task runs; ``upstream_failed`` and
    ``cancelled`` are counted apart (a plain node that never expanded because
    an input failed counts as one upstream-failed task run, see
    :func:`~fleetflow_coordinator.core.queries.node_counts`).
    """
    total = finished = completed = failed = running = upstream = cancelled = 0
    expanded = True
    for node in flow.nodes:
        n, c, _ = node_counts(flow, node)
        if n is not None:
            total += n
        elif not node.terminal:
            expanded = False
        finished += _finished(c)
        completed += c[TaskRunState.COMPLETED]
        failed += c[TaskRunState.FAILED] + c[TaskRunState.TIMED_OUT]
        upstream += c[TaskRunState.UPSTREAM_FAILED]
        cancelled += c[TaskRunState.CANCELLED]
        running += c[TaskRunState.RUNNING]
    end = flow.ended_at if flow.terminal else now
    return {
        "id": flow.id,
        "name": flow.name,
        "state": flow.state.name,
        "created_at": flow.created_at,
        "ended_at": flow.ended_at or None,
        "duration_s": max(0.0, end - flow.created_at),
        "nodes": len(flow.nodes),
        "total": total,
        "total_known": expanded,
        "finished": finished,
        "completed": completed,
        "failed": failed,
        "upstream_failed": upstream,
        "cancelled": cancelled,
        "running": running,
        "events": len(flow.events),
    }


def shape_label(resources: dict[str, float]) -> str:
    """``{"cpu": 1, "memory": 268435456}`` -> ``"cpu=1,memory=256Mi"``."""
    parts = []
    for name, amount in sorted(resources.items()):
        if name == "memory":
            parts.append(f"{name}={_bytes_label(amount)}")
        else:
            parts.append(f"{name}={amount:g}")
    return ",".join(parts)


def _bytes_label(amount: float) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= size and amount % size == 0:
            return f"{amount / size:g}{unit}"
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= size:  # not a whole number of units: 3 digits, never 2e+08
            return f"{amount / size:.3g}{unit}"
    return f"{amount:g}"


def node_view(node: NodeRecord, flow: FlowRun | None = None) -> dict[str, Any]:
    """One node's counters: a 100,000-item map is one row.

    With ``flow``, a node that ended before expanding says how
    (``ended_unexpanded``: "upstream_failed", "cancelled" or "failed") and a
    plain one counts as one task run in that state.
    """
    if flow is None:
        total, c, end = (len(node.children) if node.expanded else None), node.counts, None
    else:
        total, c, end = node_counts(flow, node)
    return {
        "node": node.index,
        "task_name": node.task_name,
        "map": node.is_map,
        "total": total,
        "finished": _finished(c),
        "counts": {_STATE_NAMES[s]: c[s] for s in _STATE_NAMES},
        "resources": shape_label(node.resources),
        "retries": node.retries,
        "terminal": node.terminal,
        "ended_unexpanded": None if end is None else end.name.lower(),
    }


def _fits(node: NodeRecord, workers: Iterable[WorkerRecord]) -> bool:
    """Whether some connected worker offers the node's task and could ever fit it."""
    for worker in workers:
        if (
            node.task_name in worker.task_names
            and runs_version(worker, node)
            and all(worker.capacity.get(r, 0.0) + 1e-9 >= a for r, a in node.resources.items())
        ):
            return True
    return False


def flow_detail(
    flow: FlowRun,
    digest: FlowDigest,
    now: float,
    core_workers: Iterable[WorkerRecord] | None = None,
    *,
    usage: UsageBook | None = None,
) -> dict[str, Any]:
    """A flow run in detail: per-node counters, slowest attempts, failures, throughput.

    Args:
        flow: The flow run.
        digest: What was folded from its event log.
        now: Current time, seconds since the epoch.
        core_workers: The connected workers; an unschedulable warning is shown
            only while none of them could run the node. None shows every one.
        usage: Measured usage; adds requested-against-used rows with advice.
    """
    summary = flow_summary(flow, now)
    running = heapq.nsmallest(
        TOP_RUNNING, digest.running.items(), key=lambda item: item[1].started_at
    )
    first_error = None
    if flow.first_error is not None:
        task_name, error, message = flow.first_error
        first_error = {
            "task_name": task_name,
            "type": getattr(error, "type", "") or "",
            "message": (getattr(error, "message", "") or message)[:2000],
            "traceback": (getattr(error, "traceback", "") or "")[-TRACEBACK_CHARS:],
        }
    start = digest.first_time or flow.created_at
    # A running flow run's chart spans at least MIN_SERIES_S, so it fills from the left.
    end = flow.ended_at if flow.terminal else max(now, start + MIN_SERIES_S)
    workers = list(core_workers) if core_workers is not None else []
    return {
        **summary,
        "node_counts": [node_view(n, flow) for n in flow.nodes],
        "slowest": [entry[2] for entry in sorted(digest.slowest, reverse=True)],
        "running_longest": [
            {
                "task_run_id": task_run_id,
                "task_name": r.task_name,
                "node": r.node,
                "index": r.index,
                "attempt": r.attempt,
                "worker_id": r.worker_id,
                "started_at": r.started_at,
                "running_s": max(0.0, now - r.started_at),
            }
            for task_run_id, r in running
        ],
        "failures": list(reversed(digest.failures)),
        "failure_entries": digest.n_failures,
        "failures_total": digest.n_failed,
        "retries": digest.n_retries,
        "lost_attempts": digest.n_lost,
        "late_results": digest.n_late,
        "first_error": first_error,
        "unschedulable": [
            {"node": n, "message": m}
            for n, m in sorted(digest.unschedulable.items())
            if flow.nodes[n].counts[TaskRunState.SCHEDULED]
            and (core_workers is None or not _fits(flow.nodes[n], workers))
        ],
        "throughput": series(digest.buckets, start, end, points=SERIES_POINTS),
        "rate_per_s": recent_rate(digest.buckets, now, since=start),
        "folded": digest.cursor >= len(flow.events),
        "time_in_state": digest.time_in_state(now, flow.terminal),
        "usage": [] if usage is None else [stats.view() for stats in usage.flow(flow.id)],
    }


def _busy_slots(worker: WorkerRecord) -> int:
    """Attempts running at once on a worker: a lease batch counts once."""
    batches = set()
    solo = 0
    for tr in worker.running.values():
        if tr.batch is None:
            solo += 1
        else:
            batches.add(id(tr.batch))
    return solo + len(batches)


def worker_view(worker: WorkerRecord, now: float, gpus: tuple[str, ...] = ()) -> dict[str, Any]:
    """A worker as its heartbeats and the coordinator's allocations describe it."""
    return {
        "worker_id": worker.worker_id,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "capacity": dict(worker.capacity),
        "allocated": {k: v for k, v in worker.allocated.items() if k in worker.capacity or v},
        # Members of a lease batch run one after another in one slot: count the
        # slots busy now ("running") apart from the attempts it holds ("leased").
        "running": _busy_slots(worker),
        "leased": len(worker.running),
        "task_names": sorted(worker.task_names),
        "cpu_percent": worker.cpu_percent,
        "memory_available": worker.memory_available,
        "last_seen": worker.last_seen,
        "heartbeat_age_s": max(0.0, now - worker.last_seen),
        "gpus": list(gpus),
    }


def series(
    buckets: dict[int, list[int]], start: float, end: float, *, points: int
) -> dict[str, Any]:
    """Per-second counts folded into at most ``points`` windows between ``start`` and ``end``.

    Returns:
        ``{"start": s, "step_s": w, "completed": [...], "failed": [...]}``;
        each list holds task runs finished per window of ``w`` seconds.
    """
    first = int(math.floor(start))
    span = max(1, int(math.floor(end)) - first + 1)
    step = max(1, math.ceil(span / points))
    n = max(1, math.ceil(span / step))
    completed = [0] * n
    failed = [0] * n
    items: Iterable[tuple[int, list[int]]] = buckets.items()
    for second, (ok, bad) in items:
        i = (second - first) // step
        if 0 <= i < n:
            completed[i] += ok
            failed[i] += bad
    return {"start": first, "step_s": step, "completed": completed, "failed": failed}


def recent_rate(
    buckets: dict[int, list[int]], now: float, seconds: int = 10, since: float = 0.0
) -> float:
    """Task runs finished per second over the last ``seconds`` whole seconds before ``now``.

    The window starts no earlier than ``since`` (a flow run's start), so a
    young flow run's rate is not diluted by seconds before it existed.
    """
    current = int(now)
    window = max(1, min(seconds, current - int(since)))
    finished = 0
    for second in range(current - window, current):
        bucket = buckets.get(second)
        if bucket is not None:
            finished += bucket[0] + bucket[1]
    return finished / window
