"""Records the scheduling core keeps: flow runs, nodes, task runs, workers, events.

Plain classes with ``__slots__``: a 100,000-item map holds 100,000 TaskRun
objects, so each carries only what the state machine needs. Nothing here does
I/O; user data is opaque ``bytes``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple, overload

__all__ = [
    "TaskRunState",
    "FlowRunState",
    "EventKind",
    "ArgKind",
    "Arg",
    "NodeRecord",
    "TaskRun",
    "FlowRun",
    "WorkerRecord",
    "EventRecord",
    "EventLog",
    "SlotBatch",
    "TERMINAL_TASK_STATES",
    "FAILED_TASK_STATES",
    "EPS",
]

#: Tolerance for comparing resource amounts (fractional CPUs add up inexactly).
EPS = 1e-9


class TaskRunState(IntEnum):
    """Task run states; values equal the protocol's ``TaskRunState`` numbers."""

    PENDING = 1
    SCHEDULED = 2
    RUNNING = 3
    AWAITING_RETRY = 4
    COMPLETED = 5
    FAILED = 6
    UPSTREAM_FAILED = 7
    CANCELLED = 8
    TIMED_OUT = 9


TERMINAL_TASK_STATES = frozenset(
    {
        TaskRunState.COMPLETED,
        TaskRunState.FAILED,
        TaskRunState.UPSTREAM_FAILED,
        TaskRunState.CANCELLED,
        TaskRunState.TIMED_OUT,
    }
)
#: Terminal states other than COMPLETED: the task run's dependents cannot run.
FAILED_TASK_STATES = TERMINAL_TASK_STATES - {TaskRunState.COMPLETED}
#: Every state number, for per-node counters indexed by state.
N_STATES = 10


class FlowRunState(IntEnum):
    """Flow run states; values equal the protocol's ``FlowRunState`` numbers."""

    RUNNING = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4


class EventKind(IntEnum):
    """Event kinds; values equal the protocol's ``EventKind`` numbers."""

    FLOW_RUN_SUBMITTED = 1
    FLOW_RUN_COMPLETED = 2
    FLOW_RUN_FAILED = 3
    FLOW_RUN_CANCELLED = 4
    NODE_EXPANDED = 5
    TASK_RUN_SCHEDULED = 6
    TASK_RUN_STARTED = 7
    TASK_RUN_COMPLETED = 8
    TASK_RUN_FAILED = 9
    TASK_RUN_RETRYING = 10
    TASK_RUN_UPSTREAM_FAILED = 11
    TASK_RUN_LEASE_EXPIRED = 12
    LATE_RESULT_REJECTED = 13
    TASK_RUN_UNSCHEDULABLE = 14
    NODE_FAILED = 15
    TASK_RUN_CANCELLED = 16
    TASK_RUN_TIMED_OUT = 17


class ArgKind(IntEnum):
    """Where an argument's value comes from (mirrors ``ArgSpec.source``)."""

    LITERAL = 1  #: payload: bytes
    LITERAL_ITEMS = 2  #: payload: list[bytes], one per map child
    NODE = 3  #: payload: int, an upstream node index
    NODES = 4  #: payload: list[int], plain upstream nodes gathered into a list


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a node, converted from the protocol at the edge."""

    name: str
    kind: ArgKind
    payload: Any
    mapped: bool = False


class NodeRecord:
    """One node of a flow graph and the task runs it expanded into."""

    __slots__ = (
        "index",
        "task_name",
        "is_map",
        "args",
        "shape",
        "resources",
        "retries",
        "retry_delay_s",
        "timeout_s",
        "whole_deps",
        "item_deps",
        "whole_consumers",
        "item_consumers",
        "whole_pending",
        "split",
        "expanded",
        "children",
        "counts",
        "n_terminal",
        "failed",
        "terminal",
        "unschedulable_reported",
        "policy",
        "tags",
        "concurrency_limit",
        "pool",
        "mean_duration_s",
        "fits_version",
        "fingerprint",
    )

    def __init__(
        self,
        index: int,
        task_name: str,
        is_map: bool,
        args: list[Arg],
        resources: dict[str, float],
        retries: int,
        retry_delay_s: float,
        timeout_s: float,
    ) -> None:
        self.index = index
        self.task_name = task_name
        self.is_map = is_map
        self.args = args
        self.resources = resources
        #: Queue key: task runs with the same shape share one ready queue.
        self.shape: tuple = (task_name, tuple(sorted(resources.items())))
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.timeout_s = timeout_s
        #: Upstream node indexes whose whole result this node needs.
        self.whole_deps: list[int] = []
        #: Upstream map nodes this map iterates item by item.
        self.item_deps: list[int] = []
        self.whole_consumers: list[int] = []
        self.item_consumers: list[int] = []
        self.whole_pending = 0
        #: A downstream map iterates this plain node's result: workers split it.
        self.split = False
        self.expanded = False
        #: [TaskRun], index = map item (one child for a plain node).
        self.children: list[TaskRun] = []
        #: Task runs per state, indexed by TaskRunState value.
        self.counts = [0] * N_STATES
        self.n_terminal = 0
        self.failed = False
        self.terminal = False
        self.unschedulable_reported = False
        #: RetryPolicy (set at validation; typed loosely to keep model imports flat)
        self.policy: Any = None
        self.tags: tuple[str, ...] = ()
        self.concurrency_limit = 0
        self.pool = "default"
        #: Moving average of the task code's wall time per attempt as workers
        #: report it, seconds; 0 until the first report. Sizes lease batches.
        self.mean_duration_s = 0.0
        #: The scheduler's fleet version when some worker was last found able
        #: to run this node (-1: never); spares re-checking per task run.
        self.fits_version = -1
        #: The task's code version the client submitted ("" any): only workers
        #: running the same code lease it (see :func:`runs_version`).
        self.fingerprint = ""


class SlotBatch:
    """Task runs leased together to run one after another in one slot.

    The batch holds its node's resources and concurrency-limit slots once,
    not once per member; they are released when the last member leaves
    RUNNING. Only the scheduling core creates these.
    """

    __slots__ = ("id", "remaining")

    def __init__(self, batch_id: int, size: int) -> None:
        self.id = batch_id
        #: Members still RUNNING on the worker.
        self.remaining = size


class TaskRun:
    """One execution unit: a plain node, or one item of a map node."""

    __slots__ = (
        "id",
        "flow",
        "node",
        "index",
        "state",
        "attempt",
        "worker_id",
        "leased_at",
        "pending",
        "result",
        "items",
        "error",
        "code_failures",
        "infra_failures",
        "retry_at",
        "batch",
    )

    def __init__(self, task_run_id: int, flow: FlowRun, node: NodeRecord, index: int) -> None:
        self.id = task_run_id
        self.flow = flow
        self.node = node
        self.index = index
        self.state = TaskRunState.PENDING
        #: Fencing token: grows by one for every new attempt.
        self.attempt = 1
        self.worker_id: str | None = None
        self.leased_at = 0.0
        #: Upstream items (map-to-map) still to complete before this can run.
        self.pending = 0
        #: Pickled result (opaque), or the split items for a downstream map.
        self.result: bytes | None = None
        self.items: list[bytes] | None = None
        #: The last error, an opaque object from the edge (a TaskError message).
        self.error: Any = None
        self.code_failures = 0
        self.infra_failures = 0
        self.retry_at = 0.0
        #: The SlotBatch this RUNNING attempt shares a slot with (None: its own slot).
        self.batch: SlotBatch | None = None


class EventRecord(NamedTuple):
    """One entry of a flow run's event log (converted to ``Event`` at the edge).

    A named tuple: built in one C call and compared field by field, which
    matters at three events per task run. Read-only.
    """

    seq: int
    kind: EventKind
    time: float
    node: int = 0
    task_name: str = ""
    task_run_id: int = 0
    index: int = 0
    attempt: int = 0
    worker_id: str = ""
    count: int = 0
    message: str = ""
    error: Any = None
    retry_at: float = 0.0


#: The last four fields of a plain event (no count, message, error or retry time).
_PLAIN_TAIL = (0, "", None, 0.0)


class EventLog:
    """A flow run's events in seq order (``log[i].seq == i + 1``), held compactly.

    Task runs of a map mostly produce *runs* of alike events: the
    TASK_RUN_SCHEDULED events of an expansion, the TASK_RUN_STARTED events of
    a lease batch, the TASK_RUN_COMPLETED events of one report. Consecutive
    plain events (no count, message, error or retry time) of one kind, time,
    node, worker and attempt, about consecutive task runs and map indexes, are
    kept as one run entry, each taking a single ``None`` list slot; they are
    rebuilt when read. Other events are kept as they are. Supports ``len``,
    indexing, slicing and iteration like a list.

    Args:
        events: Initial events, in seq order (e.g. restored from a store).
    """

    __slots__ = ("_records", "_runs", "_starts")

    def __init__(self, events: Iterable[EventRecord] = ()) -> None:
        self._records: list[EventRecord | None] = []
        #: [[first position, count, first task run id, first index, kind, time,
        #: node, task name, worker id, attempt]], by first position
        self._runs: list[list[Any]] = []
        #: First positions of _runs, for bisect.
        self._starts: list[int] = []
        for event in events:
            self.append(event)

    def __len__(self) -> int:
        return len(self._records)

    def append(self, event: EventRecord) -> None:
        """Add the next event (its ``seq`` must be ``len(self) + 1``)."""
        records = self._records
        if records and event[9:] == _PLAIN_TAIL:
            runs = self._runs
            if runs:
                run = runs[-1]
                count = run[1]
                if (
                    run[0] + count == len(records)
                    and event.task_run_id == run[2] + count
                    and event.index == run[3] + count
                    and event.kind == run[4]
                    and event.time == run[5]
                    and event.node == run[6]
                    and event.worker_id == run[8]
                    and event.attempt == run[9]
                    and event.task_name == run[7]
                ):
                    run[1] = count + 1
                    records.append(None)
                    return
            last = records[-1]
            if (
                last is not None
                and last[9:] == _PLAIN_TAIL
                and event.task_run_id == last.task_run_id + 1
                and event.index == last.index + 1
                and event.kind == last.kind
                and event.time == last.time
                and event.node == last.node
                and event.worker_id == last.worker_id
                and event.attempt == last.attempt
                and event.task_name == last.task_name
            ):
                start = len(records) - 1
                records[-1] = None
                records.append(None)
                self._add_run(start, 2, last)
                return
        records.append(event)

    def append_plain(
        self,
        kind: EventKind,
        time: float,
        node: int,
        task_name: str,
        task_run_id: int,
        index: int,
        attempt: int,
        worker_id: str,
    ) -> tuple[int, bool]:
        """Add the next event from its fields (a plain one): ``append``, without a record.

        Returns:
            ``(seq, joined)``; ``joined``: it went into one run with the event
            before it (same kind, time, node, task, worker, attempt; next ids).
        """
        records = self._records
        n = len(records)
        runs = self._runs
        if runs:
            run = runs[-1]
            count = run[1]
            if (
                run[0] + count == n
                and task_run_id == run[2] + count
                and index == run[3] + count
                and kind == run[4]
                and time == run[5]
                and node == run[6]
                and worker_id == run[8]
                and attempt == run[9]
                and task_name == run[7]
            ):
                run[1] = count + 1
                records.append(None)
                return n + 1, True
        record = EventRecord(
            n + 1, kind, time, node, task_name, task_run_id, index, attempt, worker_id
        )
        self.append(record)
        return n + 1, records[-1] is None  # a run member is kept as None

    def _add_run(self, start: int, count: int, first: EventRecord) -> None:
        self._runs.append(
            [
                start,
                count,
                first.task_run_id,
                first.index,
                first.kind,
                first.time,
                first.node,
                first.task_name,
                first.worker_id,
                first.attempt,
            ]
        )
        self._starts.append(start)

    def extend_scheduled(
        self, count: int, first_task_run_id: int, time: float, node: int, task_name: str
    ) -> int:
        """Add ``count`` TASK_RUN_SCHEDULED events of attempt 1, all at ``time``.

        They are about task runs ``first_task_run_id + i`` (map index ``i``).

        Returns:
            The seq of the first one.
        """
        start = len(self._records)
        if count:
            first = EventRecord(
                start + 1,
                EventKind.TASK_RUN_SCHEDULED,
                time,
                node,
                task_name,
                first_task_run_id,
                0,
                1,
            )
            self._records.extend([None] * count)
            self._add_run(start, count, first)
        return start + 1

    def _at(self, position: int) -> EventRecord:
        record = self._records[position]
        if record is not None:
            return record
        run = self._runs[bisect.bisect_right(self._starts, position) - 1]
        i = position - run[0]
        return EventRecord(
            position + 1, run[4], run[5], run[6], run[7], run[2] + i, run[3] + i, run[9], run[8]
        )

    @overload
    def __getitem__(self, key: int) -> EventRecord: ...

    @overload
    def __getitem__(self, key: slice) -> list[EventRecord]: ...

    def __getitem__(self, key: int | slice) -> EventRecord | list[EventRecord]:
        if isinstance(key, slice):
            records = self._records[key]
            if None not in records:
                return records  # type: ignore[return-value]
            first = key.indices(len(self._records))[0]
            step = key.step or 1
            return [
                r if r is not None else self._at(first + n * step) for n, r in enumerate(records)
            ]
        n = len(self._records)
        if key < 0:
            key += n
        if not 0 <= key < n:
            raise IndexError("event log index out of range")
        return self._at(key)

    def __iter__(self) -> Iterator[EventRecord]:
        for position, record in enumerate(self._records):
            yield record if record is not None else self._at(position)

    def spans(self, start: int, end: int) -> Iterator[EventRecord | tuple]:
        """Events ``start`` to ``end - 1`` (positions) as they are held, without rebuilding runs.

        Yields each stored event as its :class:`EventRecord`, and each stretch
        of a run as one tuple ``(seq of its first event, count, kind, time,
        node, task_name, first task_run_id, first index, attempt,
        worker_id)``: its events are about ``task_run_id + i`` and ``index +
        i``. A reader that handles a stretch whole (the dashboard's fold)
        makes no record per event.
        """
        records = self._records
        end = min(end, len(records))
        position = max(0, start)
        while position < end:
            record = records[position]
            if record is not None:
                yield record
                position += 1
                continue
            run = self._runs[bisect.bisect_right(self._starts, position) - 1]
            offset = position - run[0]
            count = min(run[0] + run[1], end) - position
            yield (position + 1, count, *run[4:8], run[2] + offset, run[3] + offset, run[9], run[8])
            position += count


class FlowRun:
    """A submitted flow: its nodes, state and event log."""

    __slots__ = (
        "id",
        "name",
        "nodes",
        "state",
        "created_at",
        "ended_at",
        "events",
        "output_node",
        "output_literal",
        "idempotency_key",
        "first_error",
        "n_terminal_nodes",
        "any_failed",
        "spec_blob",
        "durable_seq",
        "priority",
        "any_cancelled",
        "cancel_requested",
    )

    def __init__(self, flow_run_id: str, name: str, created_at: float) -> None:
        self.id = flow_run_id
        self.name = name
        self.nodes: list[NodeRecord] = []
        self.state = FlowRunState.RUNNING
        self.created_at = created_at
        self.ended_at = 0.0
        #: events[i].seq == i + 1.
        self.events = EventLog()
        self.output_node: int | None = None
        self.output_literal: bytes = b""
        self.idempotency_key = ""
        #: (task_name, error object or None, message) of the first failure.
        self.first_error: tuple[str, Any, str] | None = None
        self.n_terminal_nodes = 0
        self.any_failed = False
        #: The submitted spec as the edge received it (opaque), for the store.
        self.spec_blob = b""
        #: Highest event seq known to be stored durably (set by the edge);
        #: watchers are only shown events up to here.
        self.durable_seq = 0
        self.priority = 0
        self.any_cancelled = False
        self.cancel_requested = False

    @property
    def terminal(self) -> bool:
        """Whether the flow run has ended."""
        return self.state != FlowRunState.RUNNING


@dataclass(slots=True)
class WorkerRecord:
    """A registered worker as the coordinator sees it."""

    worker_id: str
    #: {resource: total amount}
    capacity: dict[str, float]
    task_names: frozenset[str]
    last_seen: float
    hostname: str = ""
    pid: int = 0
    #: {resource: amount allocated to running task runs}
    allocated: dict[str, float] = field(default_factory=dict)
    #: {task_run_id: TaskRun} leased to this worker
    running: dict[int, TaskRun] = field(default_factory=dict)
    cpu_percent: float = 0.0
    memory_available: float = 0.0
    #: Worker pools this worker serves.
    pools: frozenset[str] = frozenset({"default"})
    #: When it last asked for leases (not a sign of life: see Scheduler.lease).
    last_lease: float = 0.0
    #: Slots held: allocations of running attempts (a batch holds one), at most
    #: the Scheduler's ``max_leases_per_worker`` whatever the attempts request.
    slots: int = 0
    #: {task name: fingerprint of the code it runs}; "" or missing: any version.
    task_fingerprints: dict[str, str] = field(default_factory=dict)
    #: Started with --any-version: runs nodes of every fingerprint.
    any_version: bool = False
