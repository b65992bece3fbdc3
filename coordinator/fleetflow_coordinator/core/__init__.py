"""The pure scheduling core: no asyncio, no gRPC, no clock, no randomness."""

from fleetflow_coordinator.core.model import (
    Arg,
    ArgKind,
    EventKind,
    FlowRunState,
    TaskRunState,
)
from fleetflow_coordinator.core.scheduler import (
    Ack,
    InvalidFlowSpec,
    InvalidState,
    InvalidTransition,
    LeaseGrant,
    NodeSpec,
    Outcome,
    Scheduler,
)

__all__ = [
    "Ack",
    "Arg",
    "ArgKind",
    "EventKind",
    "FlowRunState",
    "InvalidFlowSpec",
    "InvalidState",
    "InvalidTransition",
    "LeaseGrant",
    "NodeSpec",
    "Outcome",
    "Scheduler",
    "TaskRunState",
]
