"""What goes into the core and comes out of it, besides the records themselves.

Owns the value types of the core's interface: :class:`Outcome` (a worker's
report, input), :class:`LeaseGrant` and :class:`Ack` (answers), and
:class:`Changes` (what changed since the last drain: the store's input).
No behaviour beyond building and sizing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any, NamedTuple

from fleetflow_coordinator.core.model import EventRecord, FlowRun, NodeRecord, TaskRun

__all__ = ["Ack", "Changes", "LeaseGrant", "Outcome"]


class LeaseGrant(NamedTuple):
    """A task run attempt handed to a worker, with its resolved arguments.

    ``args`` is ``[(name, bytes | list[bytes])]``: one pickled value, or a
    list of pickled values the worker turns into a Python list.
    """

    task_run: TaskRun
    attempt: int
    args: list[tuple[str, bytes | list[bytes]]]
    #: Nonzero when this grant is a member of a batch (same id for all
    #: members): the worker runs them one after another in one slot.
    batch: int = 0


class Outcome(NamedTuple):
    """A worker's report for one attempt.

    Exactly one of ``value``, ``items`` and ``error`` is set; ``error`` is an
    opaque object from the edge (the TaskError message).
    """

    task_run_id: int
    attempt: int
    value: bytes | None = None
    items: list[bytes] | None = None
    error: Any = None
    infrastructure: bool = False
    #: The attempt ran past its timeout and was stopped.
    timed_out: bool = False
    #: Fail now whatever retries are left (NonRetryableError, or not in retry_on).
    non_retryable: bool = False
    #: A delay the task asked for with fleetflow.Retry(delay=...), seconds.
    retry_delay_s: float | None = None
    #: Wall time of the task code, seconds (0: not measured); sizes batches.
    duration_s: float = 0.0


@dataclass(slots=True)
class Changes:
    """What changed since the last :meth:`Scheduler.drain_changes`: the store's input.

    Attributes:
        new_flows: Flow runs submitted since (their spec is written once).
        flows: Flow runs whose state, end time or first error may have changed.
        nodes: ``(flow, node)`` pairs expanded or failed.
        task_runs: Task runs whose row changed.
        events: ``(flow_run_id, EventRecord)`` appended, in order (the plain
            per-task-run ones are in ``event_rows`` instead).
        expansions: ``(flow, node, first task run id, count, first seq, time)``
            of map expansions that created every child SCHEDULED at once; they
            stand for those children's first rows and TASK_RUN_SCHEDULED
            events, which are in neither ``task_runs`` nor ``events``.
        pruned: Ids of flow runs removed by retention.
    """

    new_flows: list[FlowRun]
    flows: set[FlowRun]
    nodes: set[tuple[FlowRun, NodeRecord]]
    task_runs: set[TaskRun]
    events: list[tuple[str, EventRecord]]
    pruned: list[str]
    expansions: list[tuple[FlowRun, NodeRecord, int, int, int, float]] = _field(
        default_factory=list
    )
    #: Plain per-task-run events, which are in the log but not in ``events``,
    #: as runs of alike ones: ``[flow_run_id, first seq, count, kind, time,
    #: node, task_name, first task run id, first index, attempt, worker_id]``;
    #: event ``first seq + i`` is about task run ``first id + i``, index
    #: ``first index + i`` (the store's ``EVENT_RUN_COLUMNS``).
    event_runs: list[list[Any]] = _field(default_factory=list)
    #: Events in ``event_runs``, counted.
    run_events: int = 0
    #: The next task run id to issue, stored so pruned ids are never reused.
    next_task_run_id: int = 0

    def __bool__(self) -> bool:
        """Whether anything changed (asked after every call: stops at the first)."""
        return bool(
            self.run_events
            or self.task_runs
            or self.events
            or self.new_flows
            or self.flows
            or self.nodes
            or self.expansions
            or self.pruned
        )

    def __len__(self) -> int:
        return (
            len(self.new_flows)
            + len(self.flows)
            + len(self.nodes)
            + len(self.task_runs)
            + len(self.events)
            + self.run_events
            + 2 * len(self.expansions)
            + len(self.pruned)
        )


class Ack:
    """Per-outcome answers; values equal the protocol's ``OutcomeAck``."""

    ACCEPTED = 1
    REJECTED_STALE = 2
    REJECTED_UNKNOWN = 3
