"""Flow run events as the client sees them, decoded from the WatchFlowRun stream.

Each :class:`FlowEvent` is one entry of a flow run's event log. ``seq``
starts at 1 and grows by one per event, so a watcher that lost its stream
resumes with ``after_seq=<last seq it saw>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetflow.api.v1 import common_pb2

__all__ = ["FlowEvent", "TaskErrorInfo", "TERMINAL_KINDS"]

#: Event kinds that end a flow run's event log.
TERMINAL_KINDS = frozenset({"FLOW_RUN_COMPLETED", "FLOW_RUN_FAILED", "FLOW_RUN_CANCELLED"})

_KIND_PREFIX = "EVENT_KIND_"


@dataclass(frozen=True)
class TaskErrorInfo:
    """The text form of a task failure carried by an event.

    Attributes:
        type: Qualified exception type, e.g. ``"builtins.ValueError"``.
        message: ``str(exception)``.
        traceback: Traceback text captured on the worker ("" if none).
        log_tail: The last lines the failed attempt logged, oldest first.
    """

    type: str
    message: str
    traceback: str = ""
    log_tail: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, error: common_pb2.TaskError) -> TaskErrorInfo | None:
        """Decode a TaskError message; None when it carries nothing."""
        if not (error.type or error.message or error.traceback):
            return None
        return cls(
            type=error.type,
            message=error.message,
            traceback=error.traceback,
            log_tail=tuple(error.log_tail),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class FlowEvent:
    """One entry of a flow run's event log.

    Attributes:
        seq: Position in the flow run's log, from 1.
        kind: Event kind without the ``EVENT_KIND_`` prefix, e.g.
            ``"TASK_RUN_COMPLETED"``; ``"UNKNOWN_<n>"`` for a kind this client
            does not know yet.
        flow_run_id: The flow run this event belongs to.
        time: Wall-clock time at the coordinator, seconds since the Unix epoch.
        node: Index of the flow graph node the event is about (0 otherwise).
        task_name: Registered task name ("" for flow-level events).
        task_run_id: Task run id (0 for flow- and node-level events).
        index: Map child index (0 for a plain node).
        attempt: Attempt number of the task run (0 if not applicable).
        worker_id: The worker involved ("" if none).
        count: ``NODE_EXPANDED``: number of task runs created.
        message: Free text, e.g. why a task run is unschedulable.
        error: The failure, for failure events; else None.
        retry_at: ``TASK_RUN_RETRYING``: when the next attempt is due, seconds
            since the Unix epoch; else 0.
    """

    seq: int
    kind: str
    flow_run_id: str
    time: float
    node: int = 0
    task_name: str = ""
    task_run_id: int = 0
    index: int = 0
    attempt: int = 0
    worker_id: str = ""
    count: int = 0
    message: str = ""
    error: TaskErrorInfo | None = None
    retry_at: float = 0.0

    @classmethod
    def from_proto(cls, event: common_pb2.Event) -> FlowEvent:
        """Decode an ``Event`` message."""
        return cls(
            seq=event.seq,
            kind=_kind_name(event.kind),
            flow_run_id=event.flow_run_id,
            time=event.time,
            node=event.node,
            task_name=event.task_name,
            task_run_id=event.task_run_id,
            index=event.index,
            attempt=event.attempt,
            worker_id=event.worker_id,
            count=event.count,
            message=event.message,
            error=TaskErrorInfo.from_proto(event.error) if event.HasField("error") else None,
            retry_at=event.retry_at,
        )

    @property
    def is_terminal(self) -> bool:
        """Whether this event ends the flow run (completed, failed or cancelled)."""
        return self.kind in TERMINAL_KINDS


def _kind_name(kind: int) -> str:
    try:
        name = common_pb2.EventKind.Name(kind)
    except ValueError:
        return f"UNKNOWN_{kind}"
    return name.removeprefix(_KIND_PREFIX)
