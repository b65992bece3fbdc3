"""MemoryStore: the store contract held in dictionaries (tests, ``--db :memory:``)."""

from __future__ import annotations

from fleetflow_coordinator.store.base import (
    RowBatch,
    RowSnapshot,
    expand_event_runs,
    merge_expansions,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps rows in memory; a new Runtime over the same instance sees them again."""

    #: Writes are dictionary updates: always done on the event loop.
    inline_writes = "always"

    def __init__(self) -> None:
        #: {flow_id: flow row}
        self.flows: dict[str, tuple] = {}
        #: {(flow_id, node): node row}
        self.nodes: dict[tuple[str, int], tuple] = {}
        #: {task_run_id: task run row}
        self.task_runs: dict[int, tuple] = {}
        #: {flow_id: {seq: event row}}
        self.events: dict[str, dict[int, tuple]] = {}
        #: {(flow_id, node): expansion row} (see ``RANGE_COLUMNS``)
        self.expansions: dict[tuple[str, int], tuple] = {}
        self.writes = 0
        self.next_task_run_id = 0
        #: {key: value} (RowBatch.meta)
        self.meta: dict[str, str] = {}

    def load(self) -> RowSnapshot:
        """Return every stored row, grouped by flow run."""
        nodes: dict[str, list[tuple]] = {}
        for row in self.nodes.values():
            nodes.setdefault(row[0], []).append(row)
        task_runs: dict[str, list[tuple]] = {}
        for row in self.task_runs.values():
            task_runs.setdefault(row[1], []).append(row)
        events = {fid: [rows[s] for s in sorted(rows)] for fid, rows in self.events.items()}
        merge_expansions(list(self.expansions.values()), task_runs, events)
        return RowSnapshot(
            list(self.flows.values()),
            nodes,
            task_runs,
            events,
            self.next_task_run_id,
            dict(self.meta),
        )

    def write(self, batch: RowBatch) -> None:
        """Apply a batch (atomic, since nothing here can fail half-way)."""
        for row in batch.flows:
            self.flows[row[0]] = row
        for state, ended_at, error_task, error, error_message, flow_id in batch.flow_updates:
            old = self.flows.get(flow_id)
            if old is not None:
                self.flows[flow_id] = (
                    *old[:3],
                    state,
                    old[4],
                    ended_at,
                    old[6],
                    error_task,
                    error,
                    error_message,
                )
        for row in batch.nodes:
            self.nodes[(row[0], row[1])] = row
        for row in batch.task_runs:
            self.task_runs[row[0]] = row
        for row in batch.events:
            self.events.setdefault(row[0], {})[row[1]] = row
        for row in expand_event_runs(batch.event_runs):
            self.events.setdefault(row[0], {})[row[1]] = row
        for row in batch.expansions:
            self.expansions[(row[0], row[1])] = row
        for flow_id in batch.pruned:
            self.flows.pop(flow_id, None)
            self.events.pop(flow_id, None)
            for key in [k for k in self.expansions if k[0] == flow_id]:
                del self.expansions[key]
            for key in [k for k in self.nodes if k[0] == flow_id]:
                del self.nodes[key]
            for key in [k for k, r in self.task_runs.items() if r[1] == flow_id]:
                del self.task_runs[key]
        self.next_task_run_id = max(self.next_task_run_id, batch.next_task_run_id)
        for key, value in batch.meta.items():
            if value is None:
                self.meta.pop(key, None)
            else:
                self.meta[key] = value
        self.writes += 1

    def close(self) -> None:
        """Nothing to release."""
