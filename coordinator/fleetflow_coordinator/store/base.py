"""The store protocol and the row shapes that cross it.

Rows are plain tuples so that a batch of 100,000 task run changes costs no
per-row objects beyond the tuples themselves, and SQLite's ``executemany``
takes them as they are. Column order is given by the ``*_COLUMNS`` tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fleetflow.api.v1 import common_pb2

__all__ = [
    "FLOW_COLUMNS",
    "FLOW_UPDATE_COLUMNS",
    "NODE_COLUMNS",
    "TASK_RUN_COLUMNS",
    "EVENT_COLUMNS",
    "SCHEMA_VERSION",
    "RowBatch",
    "RowSnapshot",
    "RANGE_COLUMNS",
    "expand_range",
    "merge_expansions",
    "apply_started",
    "EVENT_RUN_COLUMNS",
    "expand_event_runs",
    "NotLeader",
    "Store",
    "StoreError",
]

#: Bumped whenever the stored shape or its meaning changes; a newer database is
#: refused. 2 added ``expansions`` (a mapped node's children stored as one row).
#: 3 changed what a lease stores: no task-run row, only its STARTED event (a
#: SCHEDULED row with a STARTED event of its attempt loads as RUNNING). Rows are
#: unchanged, but a fleetflow older than 3 would read such a task run as
#: SCHEDULED and lease its attempt again, so it must refuse the database.
SCHEMA_VERSION = 3

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


#: One row per map expansion that scheduled its children at once: children
#: ``first_task_run_id + i`` (index ``i`` < ``count``) were created SCHEDULED at
#: attempt 1, with TASK_RUN_SCHEDULED events ``first_seq + i`` at ``time``. A
#: task run row stored separately (it changed later) wins over its range.
RANGE_COLUMNS = (
    "flow_id",
    "node",
    "task_name",
    "first_task_run_id",
    "count",
    "first_seq",
    "time",
)

#: TaskRunState.SCHEDULED and EventKind.TASK_RUN_SCHEDULED, from the protocol's
#: enums (the numbers the core's enums equal; the store does not import the core).
_SCHEDULED_STATE = common_pb2.TASK_RUN_STATE_SCHEDULED
_SCHEDULED_EVENT = common_pb2.EVENT_KIND_TASK_RUN_SCHEDULED
_RUNNING_STATE = common_pb2.TASK_RUN_STATE_RUNNING
_STARTED_EVENT = common_pb2.EVENT_KIND_TASK_RUN_STARTED


def expand_range(row: tuple) -> tuple[list[tuple], list[tuple]]:
    """The task run rows and event rows one ``RANGE_COLUMNS`` row stands for.

    Returns:
        ``(task run rows, event rows)`` in ``TASK_RUN_COLUMNS`` and
        ``EVENT_COLUMNS`` order, by index.
    """
    flow_id, node, task_name, first_id, count, first_seq, time = row
    state, kind = _SCHEDULED_STATE, _SCHEDULED_EVENT
    task_runs = [
        (first_id + i, flow_id, node, i, state, 1, "", 0.0, None, None, None, 0, 0, 0.0)
        for i in range(count)
    ]
    events = [
        (flow_id, seq, kind, time, node, task_name, first_id + i, i, 1, "", 0, "", None, 0.0)
        for i, seq in enumerate(range(first_seq, first_seq + count))
    ]
    return task_runs, events


#: A run of plain events (TASK_RUN_SCHEDULED, STARTED, COMPLETED) of one kind,
#: time, node, attempt and worker, about consecutive task runs and indexes:
#: event ``first_seq + i`` is about task run ``first_task_run_id + i``, index
#: ``first_index + i``. Not a table: it stands for ``count`` rows of ``events``.
EVENT_RUN_COLUMNS = (
    "flow_id",
    "first_seq",
    "count",
    "kind",
    "time",
    "node",
    "task_name",
    "first_task_run_id",
    "first_index",
    "attempt",
    "worker_id",
)


def expand_event_runs(runs: list[tuple]) -> list[tuple]:
    """The ``EVENT_COLUMNS`` rows ``EVENT_RUN_COLUMNS`` rows stand for, in order."""
    rows = []
    for (
        flow_id,
        seq,
        count,
        kind,
        time,
        node,
        task_name,
        task_run_id,
        index,
        attempt,
        worker,
    ) in runs:
        rows.extend(
            (flow_id, seq + i, kind, time, node, task_name, task_run_id + i, index + i)
            + (attempt, worker, 0, "", None, 0.0)
            for i in range(count)
        )
    return rows


def merge_expansions(
    expansions: list[tuple],
    task_runs: dict[str, list[tuple]],
    events: dict[str, list[tuple]],
) -> None:
    """Add what ``expansions`` stand for to loaded rows (as :class:`RowSnapshot` groups them).

    A task run with a row of its own keeps it; event lists stay in seq order.
    Linear in rows: each flow run's known ids are collected once and its
    events sorted once, however many expansions it has (a flow run of
    100,000 plain nodes has one per node).
    """
    by_flow: dict[str, list[tuple]] = {}
    for row in expansions:
        by_flow.setdefault(row[0], []).append(row)
    for flow_id, rows in by_flow.items():
        stored = task_runs.setdefault(flow_id, [])
        known = {r[0] for r in stored}
        merged = events.setdefault(flow_id, [])
        for row in rows:
            range_runs, range_events = expand_range(row)
            stored.extend(r for r in range_runs if r[0] not in known)
            merged.extend(range_events)
        merged.sort(key=lambda r: r[1])


def apply_started(task_runs: dict[str, list[tuple]], events: dict[str, list[tuple]]) -> None:
    """Read task runs leased since their row was written as RUNNING, from their events.

    A lease writes no task run row (``TransitionsMixin._emit_plain``): its
    TASK_RUN_STARTED event holds what changed (attempt, worker, time), and
    the task run's row still says SCHEDULED at that attempt. Every other
    change writes the row, and every new attempt has a higher number, so a
    SCHEDULED row with a STARTED event of its attempt is a RUNNING task run
    leased to that event's worker at that event's time. Rows that say
    otherwise (stored by older versions, which wrote the row at the lease
    too) are left as they are. Linear in rows and events.
    """
    for flow_id, events_of_flow in events.items():
        rows = task_runs.get(flow_id)
        if not rows:
            continue
        started = {e[6]: e for e in events_of_flow if e[2] == _STARTED_EVENT}
        if not started:
            continue
        for i, row in enumerate(rows):
            if row[4] == _SCHEDULED_STATE:
                event = started.get(row[0])
                if event is not None and event[8] == row[5]:
                    rows[i] = (*row[:4], _RUNNING_STATE, row[5], event[9], event[3], *row[8:])


class StoreError(RuntimeError):
    """The store cannot be opened or written: a clear, fatal configuration error."""


class NotLeader(StoreError):
    """The database refused a write: another coordinator holds the leadership now.

    Raised by stores shared by several coordinators (PostgreSQL). The
    coordinator that gets it steps down: it writes nothing more and answers
    as a standby.
    """


@dataclass(slots=True)
class RowBatch:
    """One group commit: everything is written in one transaction, or nothing.

    Attributes:
        flows: Full rows (``FLOW_COLUMNS``) of newly submitted flow runs.
        flow_updates: ``FLOW_UPDATE_COLUMNS`` rows of flow runs already stored.
        nodes: Node rows (``NODE_COLUMNS``) to insert or replace.
        task_runs: Task run rows (``TASK_RUN_COLUMNS``) to insert or replace.
        events: Event rows (``EVENT_COLUMNS``) to append.
        event_runs: ``EVENT_RUN_COLUMNS`` rows: runs of plain events, each
            standing for ``count`` event rows (:func:`expand_event_runs`).
        expansions: ``RANGE_COLUMNS`` rows: map expansions, each standing for
            its children's first task run rows and TASK_RUN_SCHEDULED events.
        pruned: Flow run ids to delete with everything that belongs to them.
    """

    flows: list[tuple] = field(default_factory=list)
    flow_updates: list[tuple] = field(default_factory=list)
    nodes: list[tuple] = field(default_factory=list)
    task_runs: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    event_runs: list[tuple] = field(default_factory=list)
    expansions: list[tuple] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    #: Stored in ``meta`` (kept at its highest): ids below it are never reused.
    next_task_run_id: int = 0
    #: ``{key: value}`` settings kept across restarts in ``meta`` (concurrency
    #: limits set over the API, measured usage); a None value deletes the key.
    #: Keys never start with one of :data:`RESERVED_META`.
    meta: dict[str, str | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.meta)
            + len(self.flows)
            + len(self.flow_updates)
            + len(self.nodes)
            + len(self.task_runs)
            + len(self.events)
            + sum(run[2] for run in self.event_runs)
            + len(self.expansions)
            + len(self.pruned)
        )

    def take_event_runs(self) -> None:
        """Move ``event_runs`` into ``events`` as rows, for a store that writes rows only."""
        if self.event_runs:
            self.events.extend(expand_event_runs(self.event_runs))
            self.event_runs = []


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
    #: ``{key: value}`` written through :attr:`RowBatch.meta`.
    meta: dict[str, str] = field(default_factory=dict)


#: ``meta`` keys the stores keep for themselves (never in ``RowSnapshot.meta``).
RESERVED_META = ("schema_version", "next_task_run_id")


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
