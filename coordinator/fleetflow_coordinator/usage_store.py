"""Measured usage kept across restarts: the ``UsageBook`` as rows of the store's ``meta``.

Each task's fleet-wide stats is one row (``usage:task:NAME``) and each flow
run's per-node stats one more (``usage:flow:ID``), as JSON of the sketches'
bins, so right-sizing advice survives a coordinator restart. Only what changed
since the last save is written (:func:`dirty_meta`); a pruned flow run's row is
deleted with it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fleetflow_coordinator.usage import QuantileSketch, TaskUsageStats, UsageBook

__all__ = ["dirty_meta", "load_usage", "TASK_PREFIX", "FLOW_PREFIX"]

TASK_PREFIX = "usage:task:"
FLOW_PREFIX = "usage:flow:"
_SKETCHES = ("cpu_cores", "cpu_seconds", "peak_memory_bytes", "duration_seconds")


def _sketch_json(sketch: QuantileSketch) -> dict[str, Any]:
    return {
        "bins": [[k, n] for k, n in sketch.bins.items()],
        "zeros": sketch.zeros,
        "count": sketch.count,
        "total": sketch.total,
        "lo": None if math.isinf(sketch.lo) else sketch.lo,
        "hi": sketch.hi,
    }


def _sketch(data: dict[str, Any]) -> QuantileSketch:
    sketch = QuantileSketch()
    sketch.bins = {int(k): int(n) for k, n in data["bins"]}
    sketch.zeros = int(data["zeros"])
    sketch.count = int(data["count"])
    sketch.total = float(data["total"])
    sketch.lo = math.inf if data["lo"] is None else float(data["lo"])
    sketch.hi = float(data["hi"])
    return sketch


def _stats_json(stats: TaskUsageStats) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_name": stats.task_name,
        "node": stats.node,
        "requested": stats.requested,
    }
    for name in _SKETCHES:
        data[name] = _sketch_json(getattr(stats, name))
    return data


def _stats(data: dict[str, Any]) -> TaskUsageStats:
    stats = TaskUsageStats(data["task_name"], int(data["node"]), dict(data["requested"]))
    for name in _SKETCHES:
        setattr(stats, name, _sketch(data[name]))
    return stats


def dirty_meta(book: UsageBook) -> dict[str, str | None]:
    """The ``meta`` rows of what changed since the last call (None deletes a row)."""
    meta: dict[str, str | None] = {}
    for name in book.dirty_tasks:
        stats = book.by_task.get(name)
        meta[TASK_PREFIX + name] = None if stats is None else json.dumps(_stats_json(stats))
    for flow_run_id in book.dirty_flows:
        nodes = book.by_flow.get(flow_run_id)
        meta[FLOW_PREFIX + flow_run_id] = (
            None if nodes is None else json.dumps([_stats_json(nodes[i]) for i in sorted(nodes)])
        )
    book.dirty_tasks.clear()
    book.dirty_flows.clear()
    return meta


def load_usage(book: UsageBook, meta: dict[str, str]) -> int:
    """Fill ``book`` from stored ``meta`` rows; return how many rows were read.

    A row that does not parse is skipped (usage is advice, not state).
    """
    read = 0
    for key, value in meta.items():
        try:
            if key.startswith(TASK_PREFIX):
                stats = _stats(json.loads(value))
                book.by_task[stats.task_name] = stats
            elif key.startswith(FLOW_PREFIX):
                rows = [_stats(d) for d in json.loads(value)]
                book.by_flow[key.removeprefix(FLOW_PREFIX)] = {s.node: s for s in rows}
            else:
                continue
        except (ValueError, KeyError, TypeError):
            continue
        read += 1
    return read
