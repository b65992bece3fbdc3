"""The store protocol and the row shapes that cross it.

Rows are plain tuples so that a batch of 100,000 task run changes costs no
per-row objects beyond the tuples themselves, and SQLite's ``executemany``
takes them as they are. Column order is given by the ``*_COLUMNS`` tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "FLOW_COLUMNS",
    "FLOW_UPDATE_COLUMNS",
    "NODE_COLUMNS",
    "TASK_RUN_COLUMNS",
    "EVENT_COLUMNS",
    "SCHEMA_VERSION",
    "RowBatch",
    "RowSnapshot",
    "Store",
    "StoreError",
]

#: Bumped whenever the stored shape changes; a newer database is refused.
SCHEMA_VERSION = 1

FLOW_COLUMNS = (
    "id",
    "name",
    "spec",
    "state",
    "created_at",
    "ended_at",
    "idempotency_key",
    "error_task",
    "error",
    "error_message",
)
#: What changes on a stored flow run; the id comes last (it is the WHERE key).
FLOW_UPDATE_COLUMNS = ("state", "ended_at", "error_task", "error", "error_message", "id")
NODE_COLUMNS = ("flow_id", "node", "expanded", "failed")
TASK_RUN_COLUMNS = (
    "id",
    "flow_id",
    "node",
    "idx",
    "state",
    "attempt",
    "worker_id",
    "leased_at",
    "result",
    "items",
    "error",
    "code_failures",
    "infra_failures",
    "retry_at",
)
EVENT_COLUMNS = (
    "flow_id",
    "seq",
    "kind",
    "time",
    "node",
    "task_name",
    "task_run_id",
    "idx",
    "attempt",
    "worker_id",
    "count",
    "message",
    "error",
    "retry_at",
)


class StoreError(RuntimeError):
    """The store cannot be opened or written: a clear, fatal configuration error."""


@dataclass(slots=True)
class RowBatch:
    """One group commit: everything is written in one transaction, or nothing.

    Attributes:
        flows: Full rows (``FLOW_COLUMNS``) of newly submitted flow runs.
        flow_updates: ``FLOW_UPDATE_COLUMNS`` rows of flow runs already stored.
        nodes: Node rows (``NODE_COLUMNS``) to insert or replace.
        task_runs: Task run rows (``TASK_RUN_COLUMNS``) to insert or replace.
        events: Event rows (``EVENT_COLUMNS``) to append.
        pruned: Flow run ids to delete with everything that belongs to them.
    """

    flows: list[tuple] = field(default_factory=list)
    flow_updates: list[tuple] = field(default_factory=list)
    nodes: list[tuple] = field(default_factory=list)
    task_runs: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    #: Stored in ``meta`` (kept at its highest): ids below it are never reused.
    next_task_run_id: int = 0

    def __len__(self) -> int:
        return (
            len(self.flows)
            + len(self.flow_updates)
            + len(self.nodes)
            + len(self.task_runs)
            + len(self.events)
            + len(self.pruned)
        )


@dataclass(slots=True)
class RowSnapshot:
    """Everything stored, as rows, grouped by flow run id where it belongs."""

    flows: list[tuple]
    #: {flow_id: [node row]}
    nodes: dict[str, list[tuple]]
    #: {flow_id: [task run row]}
    task_runs: dict[str, list[tuple]]
    #: {flow_id: [event row]} in seq order
    events: dict[str, list[tuple]]
    #: The next task run id to issue (0 for a new store).
    next_task_run_id: int = 0


class Store(Protocol):
    """What the coordinator needs from persistence.

    ``write`` and ``load`` block; the runtime calls them from a worker thread
    (``asyncio.to_thread``), one at a time.
    """

    def load(self) -> RowSnapshot:
        """Read everything stored (called once, at start)."""
        ...

    def write(self, batch: RowBatch) -> None:
        """Apply one batch atomically and durably.

        Raises:
            StoreError: the write failed; nothing of the batch is stored.
        """
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...
