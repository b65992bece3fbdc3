"""Read-only views over the core's state (no changes, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetflow_coordinator.core.model import EventKind, TaskRun

__all__ = ["AttemptView", "attempt_history"]

_ENDINGS = {
    EventKind.TASK_RUN_COMPLETED: "COMPLETED",
    EventKind.TASK_RUN_FAILED: "FAILED",
    EventKind.TASK_RUN_RETRYING: "RETRYING",
    EventKind.TASK_RUN_LEASE_EXPIRED: "LEASE_EXPIRED",
    EventKind.TASK_RUN_TIMED_OUT: "TIMED_OUT",
    EventKind.TASK_RUN_CANCELLED: "CANCELLED",
}


@dataclass(slots=True)
class AttemptView:
    """One attempt of a task run as the event log tells it."""

    attempt: int
    worker_id: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    outcome: str = "RUNNING"
    error: Any = None
    infrastructure: bool = False
    message: str = ""


def attempt_history(tr: TaskRun) -> list[AttemptView]:
    """Every attempt of ``tr``, oldest first, rebuilt from its flow run's event log.

    The log is the single record of attempts (so nothing extra is stored per
    task run); this walks it once, which is fine for an inspect call.
    """
    attempts: dict[int, AttemptView] = {}
    for event in tr.flow.events:
        if event.task_run_id != tr.id:
            continue
        if event.kind == EventKind.TASK_RUN_STARTED:
            attempts[event.attempt] = AttemptView(
                event.attempt, worker_id=event.worker_id, started_at=event.time
            )
            continue
        outcome = _ENDINGS.get(event.kind)
        if outcome is None:
            continue
        view = attempts.get(event.attempt)
        if view is None:  # ended without starting (e.g. cancelled while queued)
            view = attempts[event.attempt] = AttemptView(event.attempt)
        view.ended_at = event.time
        view.outcome = outcome
        view.error = event.error
        view.message = event.message
        view.infrastructure = event.kind == EventKind.TASK_RUN_LEASE_EXPIRED
    return [attempts[k] for k in sorted(attempts)]
