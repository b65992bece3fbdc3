"""Requests the client builds and answers it decodes, shared by every call path."""

from __future__ import annotations

import math
import uuid
from typing import Any

from fleetflow._info import TERMINAL_STATES, flow_state_name
from fleetflow._retry import remaining_s
from fleetflow._task import Flow
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as pb
from fleetflow.errors import FlowRunCancelled, FlowRunFailed, FlowRunTimeout
from fleetflow.events import FlowEvent
from fleetflow.serde import exception_from_error, loads
from fleetflow.store.session import STORED_KINDS

__all__ = [
    "check_int",
    "check_wait",
    "LONG_POLL_GRACE_S",
    "LONG_POLL_S",
    "decode_outcome",
    "get_request",
    "new_events",
    "poll_done",
    "poll_wait_s",
    "submit_request",
]

#: Longest GetFlowRun long poll, seconds.
LONG_POLL_S = 30.0
#: Extra time a long-poll RPC gets on top of its wait, seconds.
LONG_POLL_GRACE_S = 10.0
#: Shortest pause between polls that returned early without an answer, seconds.
MIN_POLL_GAP_S = 0.1


def submit_request(
    flow: Flow | common_pb2.FlowSpec,
    args: tuple,
    params: dict[str, Any],
    idempotency_key: str | None,
    priority: int = 0,
) -> pb.SubmitFlowRunRequest:
    """The SubmitFlowRun request for ``flow`` called with these parameters.

    Raises:
        TypeError: ``flow`` is neither a flow nor a FlowSpec, parameters were
            given with a FlowSpec, or they do not fit the flow.
    """
    priority = check_int("priority", priority, low=-(2**31), high=2**31 - 1)
    if idempotency_key is not None and not isinstance(idempotency_key, str):
        raise TypeError(f"idempotency_key must be a str or None, got {idempotency_key!r}")
    if isinstance(flow, common_pb2.FlowSpec):
        if args or params:
            raise TypeError("submit(spec): parameters are already recorded in a FlowSpec")
        spec = flow
    elif isinstance(flow, Flow):
        spec = flow.build(*args, **params)
    else:
        raise TypeError(f"submit() needs a @flow function or a FlowSpec, got {type(flow).__name__}")
    if priority:
        spec = common_pb2.FlowSpec.FromString(spec.SerializeToString())
        spec.priority = priority
    # A key is always sent so that retrying a submission whose answer was lost
    # returns the same flow run instead of starting a second one.
    return pb.SubmitFlowRunRequest(spec=spec, idempotency_key=idempotency_key or uuid.uuid4().hex)


def check_int(field: str, value: Any, *, low: int, high: int) -> int:
    """An argument of a client call that must be a whole number in ``[low, high]``.

    Raises:
        ValueError: naming ``field`` and the rule (not protobuf's "Value out of range").
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be a whole number in [{low}, {high}], got {value!r}")
    return value


def check_wait(field: str, value: Any) -> float:
    """Seconds a client call may wait: a finite number >= 0.

    Raises:
        ValueError: naming ``field`` and the rule (a NaN wait used to reach the
            coordinator and come back as DEADLINE_EXCEEDED).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def get_request(flow_run_id: str, *, include_result: bool, wait_s: float) -> pb.GetFlowRunRequest:
    """A GetFlowRun request; ``wait_s`` > 0 long-polls until the run ends."""
    return pb.GetFlowRunRequest(
        flow_run_id=flow_run_id, include_result=include_result, wait_seconds=wait_s
    )


def poll_wait_s(deadline: float | None) -> float:
    """How long the next long poll may wait on the coordinator, seconds."""
    remaining = remaining_s(deadline)
    return LONG_POLL_S if remaining is None else min(remaining, LONG_POLL_S)


def poll_done(
    response: pb.GetFlowRunResponse, flow_run_id: str, deadline: float | None, elapsed_s: float
) -> float | None:
    """After one long poll: None when the run ended, else the pause before the next, seconds.

    Raises:
        FlowRunTimeout: the caller's deadline passed while the run goes on.
    """
    if flow_state_name(response.info.state) in TERMINAL_STATES:
        return None
    remaining = remaining_s(deadline)
    if remaining is not None and remaining <= 0:
        raise FlowRunTimeout(flow_run_id)
    # A coordinator that answers a long poll early must not make us spin.
    pause = max(0.0, MIN_POLL_GAP_S - elapsed_s)
    return pause if remaining is None else min(pause, remaining)


#: What :func:`decode_outcome` returns for a result in the result store: the
#: caller reads it from there (or describes it).
STORED = object()


def _decode_value(value: common_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "pickled":
        return loads(value.pickled)
    if kind == "list":
        return [loads(item) for item in value.list.items]
    if kind in STORED_KINDS:
        return STORED
    return None


def decode_outcome(response: pb.GetFlowRunResponse) -> Any:
    """The result of an ended flow run, or the exception it ended with, raised.

    Raises:
        Exception: the flow run's first task failure, as its own type.
        FlowRunFailed: the flow run failed without a task error.
        FlowRunCancelled: the flow run was cancelled.
    """
    info = response.info
    state = flow_state_name(info.state)
    if state == "COMPLETED":
        return _decode_value(response.result)
    if state == "CANCELLED":
        raise FlowRunCancelled(f"flow run {info.flow_run_id} ({info.name}) was cancelled")
    error = response.error
    if not (error.type or error.message or error.pickled):
        raise FlowRunFailed(f"flow run {info.flow_run_id} ({info.name}) ended in state {state}")
    exc = exception_from_error(error)
    where = f" in task {response.error_task_name!r}" if response.error_task_name else ""
    exc.add_note(f"Raised{where} of flow run {info.flow_run_id} ({info.name}).")
    raise exc


def new_events(response: pb.WatchFlowRunResponse, last_seq: int) -> list[FlowEvent]:
    """Decode a batch, dropping events at or before ``last_seq`` (already delivered)."""
    return [FlowEvent.from_proto(e) for e in response.events if e.seq > last_seq]
