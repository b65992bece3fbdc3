"""The transition table: every allowed state change of a task run or flow run, and its event.

Owns :class:`Stimulus` and :class:`FlowStimulus` (what can happen to a task
run or a flow run), the two tables ``(state, stimulus) -> (next state, event
kind)``, :class:`InvalidTransition` for any pair not in them, and
:data:`EVENTS`, which says for every event kind how it is recorded (which
store rows it changes, whether it is a plain per-task-run event that takes the
direct path). Adding a state, a stimulus or an event kind means editing this
module; the scheduler's one transition function and one emission function
(``TransitionsMixin._transition``, ``_end_flow`` and ``_emit``) only look
things up here. Numbers equal the protocol's (``fleetflow.api.v1``), which a
test checks. See docs/architecture.md, "State machine".
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from fleetflow_coordinator.core.model import (
    TERMINAL_TASK_STATES,
    EventKind,
    FlowRunState,
    TaskRunState,
)

__all__ = [
    "EVENTS",
    "FLOW_RUN_TRANSITIONS",
    "TASK_RUN_TRANSITIONS",
    "EventSpec",
    "FlowStimulus",
    "InvalidTransition",
    "Stimulus",
]


class Stimulus(IntEnum):
    """What can happen to a task run."""

    #: Every input it needs has completed (or it has none).
    INPUTS_READY = 1
    #: Its retry delay has passed.
    RETRY_DUE = 2
    #: Its attempt ended through the infrastructure (worker lost, task process
    #: died, lease lost in transit, handed back by a draining worker): queue a
    #: new attempt.
    REQUEUE = 3
    #: Granted to a worker.
    LEASE = 4
    #: The current attempt reported success.
    SUCCEED = 5
    #: The current attempt failed (or timed out) and retries are left.
    RETRY = 6
    #: It fails for good: task code with no retries left, the infrastructure
    #: budget used up, a result over the limit, or unschedulable for too long.
    FAIL = 7
    #: The last attempt ran past its timeout.
    TIME_OUT = 8
    #: Cancelled (the task run, its node, its flow run, or the flow run's timeout).
    CANCEL = 9
    #: An input it needs can never complete.
    UPSTREAM_FAIL = 10


class FlowStimulus(IntEnum):
    """How a flow run ends once every node is terminal."""

    COMPLETE = 1
    FAIL = 2
    CANCEL = 3


_S = TaskRunState
_E = EventKind

#: ``{(state, stimulus): (next state, event that records it)}``: every task run
#: state change there is. Terminal states have no way out.
TASK_RUN_TRANSITIONS: dict[tuple[TaskRunState, Stimulus], tuple[TaskRunState, EventKind]] = {
    (_S.PENDING, Stimulus.INPUTS_READY): (_S.SCHEDULED, _E.TASK_RUN_SCHEDULED),
    (_S.AWAITING_RETRY, Stimulus.RETRY_DUE): (_S.SCHEDULED, _E.TASK_RUN_SCHEDULED),
    (_S.RUNNING, Stimulus.REQUEUE): (_S.SCHEDULED, _E.TASK_RUN_SCHEDULED),
    (_S.SCHEDULED, Stimulus.LEASE): (_S.RUNNING, _E.TASK_RUN_STARTED),
    (_S.RUNNING, Stimulus.SUCCEED): (_S.COMPLETED, _E.TASK_RUN_COMPLETED),
    (_S.RUNNING, Stimulus.RETRY): (_S.AWAITING_RETRY, _E.TASK_RUN_RETRYING),
    (_S.RUNNING, Stimulus.FAIL): (_S.FAILED, _E.TASK_RUN_FAILED),
    (_S.SCHEDULED, Stimulus.FAIL): (_S.FAILED, _E.TASK_RUN_FAILED),
    (_S.RUNNING, Stimulus.TIME_OUT): (_S.TIMED_OUT, _E.TASK_RUN_TIMED_OUT),
    (_S.PENDING, Stimulus.CANCEL): (_S.CANCELLED, _E.TASK_RUN_CANCELLED),
    (_S.SCHEDULED, Stimulus.CANCEL): (_S.CANCELLED, _E.TASK_RUN_CANCELLED),
    (_S.RUNNING, Stimulus.CANCEL): (_S.CANCELLED, _E.TASK_RUN_CANCELLED),
    (_S.AWAITING_RETRY, Stimulus.CANCEL): (_S.CANCELLED, _E.TASK_RUN_CANCELLED),
    (_S.PENDING, Stimulus.UPSTREAM_FAIL): (_S.UPSTREAM_FAILED, _E.TASK_RUN_UPSTREAM_FAILED),
    (_S.SCHEDULED, Stimulus.UPSTREAM_FAIL): (_S.UPSTREAM_FAILED, _E.TASK_RUN_UPSTREAM_FAILED),
}

#: ``{(state, stimulus): (next state, event)}`` for flow runs.
FLOW_RUN_TRANSITIONS: dict[tuple[FlowRunState, FlowStimulus], tuple[FlowRunState, EventKind]] = {
    (FlowRunState.RUNNING, FlowStimulus.COMPLETE): (
        FlowRunState.COMPLETED,
        _E.FLOW_RUN_COMPLETED,
    ),
    (FlowRunState.RUNNING, FlowStimulus.FAIL): (FlowRunState.FAILED, _E.FLOW_RUN_FAILED),
    (FlowRunState.RUNNING, FlowStimulus.CANCEL): (FlowRunState.CANCELLED, _E.FLOW_RUN_CANCELLED),
}


class EventSpec(NamedTuple):
    """How one event kind is recorded."""

    #: A per-task-run event with no message, error, count or retry time, which
    #: every task run goes through: the log and the store get it directly,
    #: without an ``EventRecord`` in between.
    plain: bool = False
    #: The flow run's own row changes with it (state, end time, first error).
    flow_row: bool = False
    #: A node's row changes with it (expanded, failed).
    node_row: bool = False
    #: It ends the flow run: nothing is appended after it.
    flow_end: bool = False


#: ``{EventKind: EventSpec}`` for every kind there is.
EVENTS: dict[EventKind, EventSpec] = {
    _E.FLOW_RUN_SUBMITTED: EventSpec(flow_row=True),
    _E.FLOW_RUN_COMPLETED: EventSpec(flow_row=True, flow_end=True),
    _E.FLOW_RUN_FAILED: EventSpec(flow_row=True, flow_end=True),
    _E.FLOW_RUN_CANCELLED: EventSpec(flow_row=True, flow_end=True),
    _E.NODE_EXPANDED: EventSpec(node_row=True),
    _E.NODE_FAILED: EventSpec(flow_row=True, node_row=True),
    _E.TASK_RUN_SCHEDULED: EventSpec(plain=True),
    _E.TASK_RUN_STARTED: EventSpec(plain=True),
    _E.TASK_RUN_COMPLETED: EventSpec(plain=True),
    _E.TASK_RUN_FAILED: EventSpec(flow_row=True),
    _E.TASK_RUN_TIMED_OUT: EventSpec(flow_row=True),
    _E.TASK_RUN_RETRYING: EventSpec(),
    _E.TASK_RUN_UPSTREAM_FAILED: EventSpec(),
    _E.TASK_RUN_CANCELLED: EventSpec(),
    _E.TASK_RUN_LEASE_EXPIRED: EventSpec(),
    _E.LATE_RESULT_REJECTED: EventSpec(),
    _E.TASK_RUN_UNSCHEDULABLE: EventSpec(),
}

#: Derived lookups for the emission function's hot path.
PLAIN_EVENTS = frozenset(k for k, spec in EVENTS.items() if spec.plain)
FLOW_ROW_EVENTS = frozenset(k for k, spec in EVENTS.items() if spec.flow_row)
NODE_ROW_EVENTS = frozenset(k for k, spec in EVENTS.items() if spec.node_row)
FLOW_END_EVENTS = frozenset(k for k, spec in EVENTS.items() if spec.flow_end)
#: The flow run state each ending event records.
FLOW_END_STATES = {kind: state for (_, _), (state, kind) in FLOW_RUN_TRANSITIONS.items()}


class InvalidTransition(RuntimeError):
    """A state change that the transition table does not allow (a bug in the core).

    Args:
        what: ``"task run 12"`` or ``"flow run abc"``.
        state: The state it was in.
        stimulus: What was applied.
    """

    def __init__(self, what: str, state: IntEnum, stimulus: IntEnum) -> None:
        super().__init__(f"{what}: no transition from {state.name} on {stimulus.name}")
        self.what = what
        self.state = state
        self.stimulus = stimulus

    def __reduce__(self):
        return (type(self), (self.what, self.state, self.stimulus))


def _check_table() -> None:
    """The table's own rules, checked at import (cheap, and a bad edit fails at once)."""
    for (state, _), (target, kind) in TASK_RUN_TRANSITIONS.items():
        assert state not in TERMINAL_TASK_STATES, "terminal is terminal"
        assert kind in EVENTS and not EVENTS[kind].flow_end
        assert target != state
    assert set(EVENTS) == set(EventKind), "every event kind says how it is recorded"
    # A map's expansion creates its ready children SCHEDULED in one pass and
    # records them as one run of TASK_RUN_SCHEDULED events (EventLog.extend_scheduled,
    # the store's expansion rows): that is this edge, and a plain event.
    first = TASK_RUN_TRANSITIONS[(_S.PENDING, Stimulus.INPUTS_READY)]
    assert first == (_S.SCHEDULED, _E.TASK_RUN_SCHEDULED) and first[1] in PLAIN_EVENTS


_check_table()
