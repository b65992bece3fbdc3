"""Run fleetflow flows from Apache Airflow: ``pip install "fleetflow[airflow]"``.

A DAG runs a flow with one task::

    from airflow.sdk import DAG
    from fleetflow.airflow import FleetflowRunOperator

    with DAG("fleetflow_squares", schedule=None):
        FleetflowRunOperator(task_id="squares", flow="examples.squares:squares")

:class:`FleetflowRunOperator` submits the flow (by import path) to a
coordinator and, by default, **defers**: :class:`FleetflowFlowRunTrigger`
watches the flow run's event stream in Airflow's triggerer, so no Airflow
worker slot is held while the flow runs. Progress goes to the task's log. The
task then ends with the flow's result (pushed to XCom) or fails with the flow's
own error. Clearing, marking or killing the Airflow task cancels the flow run
(the operator's ``on_kill`` while it runs on a worker, the trigger's
``on_kill`` while it is deferred).

The coordinator is the ``coordinator`` argument, else ``FLEETFLOW_COORDINATOR``,
else the ``[client]`` section of the configuration file (``profile`` picks a
profile), as for every fleetflow client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from fleetflow import AsyncClient, Client
from fleetflow._task import Flow
from fleetflow.events import FlowEvent
from fleetflow.loader import load_target
from fleetflow.settings import ClientSettings

__all__ = ["FleetflowRunOperator", "FleetflowFlowRunTrigger", "FleetflowFlowRunError"]

#: Seconds between progress lines in the task log.
DEFAULT_LOG_INTERVAL_S = 10.0
#: Event kinds always written to the task log, not only counted.
_LOGGED_KINDS = frozenset(
    {
        "FLOW_RUN_COMPLETED",
        "FLOW_RUN_FAILED",
        "FLOW_RUN_CANCELLED",
        "TASK_RUN_FAILED",
        "TASK_RUN_TIMED_OUT",
        "TASK_RUN_RETRYING",
        "TASK_RUN_UNSCHEDULABLE",
    }
)


class FleetflowFlowRunError(AirflowException):
    """The flow run failed or was cancelled; the message carries the flow's error."""


def _coordinator(address: str | None, profile: str | None) -> str:
    flags = {"coordinator": address} if address else {}
    return ClientSettings.load(flags, profile=profile).settings.coordinator


class _Progress:
    """Turns the event stream into task-log lines: notable events, and a periodic summary."""

    def __init__(self, log: Any, flow_run_id: str, interval_s: float) -> None:
        self.log = log
        self.flow_run_id = flow_run_id
        self.interval_s = interval_s
        self.counts: dict[str, int] = {}
        self.last_seq = 0
        self._next_summary = time.monotonic() + interval_s

    def feed(self, event: FlowEvent) -> None:
        self.last_seq = event.seq
        self.counts[event.kind] = self.counts.get(event.kind, 0) + max(1, event.count)
        if event.kind in _LOGGED_KINDS:
            where = f" {event.task_name}[{event.index}]" if event.task_name else ""
            detail = (
                f": {event.error}"
                if event.error
                else (f": {event.message}" if event.message else "")
            )
            self.log.info("fleetflow %s%s%s", event.kind, where, detail)
        if time.monotonic() >= self._next_summary:
            self.summary()

    def summary(self) -> None:
        self._next_summary = time.monotonic() + self.interval_s
        done = self.counts.get("TASK_RUN_COMPLETED", 0)
        failed = self.counts.get("TASK_RUN_FAILED", 0) + self.counts.get("TASK_RUN_TIMED_OUT", 0)
        self.log.info(
            "fleetflow flow run %s: %d task runs completed, %d failed, %d retries (event %d)",
            self.flow_run_id,
            done,
            failed,
            self.counts.get("TASK_RUN_RETRYING", 0),
            self.last_seq,
        )


class FleetflowFlowRunTrigger(BaseTrigger):
    """Watch a flow run's event stream until it ends; fire one event with its state.

    Args:
        flow_run_id: The flow run.
        coordinator: The coordinator's ``HOST:PORT``.
        after_seq: Events up to this ``seq`` were already seen.
        log_interval_s: Seconds between progress lines.
    """

    def __init__(
        self,
        flow_run_id: str,
        coordinator: str,
        after_seq: int = 0,
        log_interval_s: float = DEFAULT_LOG_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id
        self.coordinator = coordinator
        self.after_seq = after_seq
        self.log_interval_s = log_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and arguments, to rebuild the trigger in the triggerer."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flow_run_id": self.flow_run_id,
                "coordinator": self.coordinator,
                "after_seq": self.after_seq,
                "log_interval_s": self.log_interval_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Follow the events (resuming after a lost stream) and report the end state."""
        progress = _Progress(self.log, self.flow_run_id, self.log_interval_s)
        async with AsyncClient(self.coordinator) as client:
            async for event in client.watch(self.flow_run_id, after_seq=self.after_seq):
                progress.feed(event)
                if event.is_terminal:
                    break
            info = await client.get(self.flow_run_id)
        progress.summary()
        yield TriggerEvent(
            {"flow_run_id": self.flow_run_id, "state": info.state, "last_seq": info.last_seq}
        )

    async def on_kill(self) -> None:
        """The Airflow task was cleared, marked or killed while deferred: cancel the flow run."""
        async with AsyncClient(self.coordinator) as client:
            cancelled = await client.cancel(self.flow_run_id)
        self.log.info("fleetflow flow run %s cancelled (%d task runs)", self.flow_run_id, cancelled)


class FleetflowRunOperator(BaseOperator):
    """Run a fleetflow flow and wait for it, deferred by default.

    Args:
        flow: ``"package.module:flow"`` or ``"path/to/file.py:flow"``: the
            ``@flow`` to run (importable on the Airflow worker; the fleet's
            workers import the module that defines its tasks).
        parameters: Keyword parameters of the flow (templated).
        coordinator: ``HOST:PORT`` of the coordinator (templated); default
            ``FLEETFLOW_COORDINATOR``, then the configuration file.
        profile: The configuration file's profile to read the client
            settings from.
        deferrable: Wait in the triggerer (no worker slot held) rather than
            in this task's process. Default True.
        priority: The flow run's priority (higher is leased first).
        log_interval_s: Seconds between progress lines in the task log.
        result_timeout_s: How long to wait for the result once the flow run
            has ended, seconds.
        **kwargs: :class:`airflow.sdk.BaseOperator` arguments.

    The flow run's id is pushed to XCom as ``flow_run_id``; the flow's result
    is the task's return value (XCom ``return_value``).
    """

    template_fields: Sequence[str] = ("flow", "parameters", "coordinator")
    ui_color = "#d6ecfa"

    def __init__(
        self,
        *,
        flow: str,
        parameters: Mapping[str, Any] | None = None,
        coordinator: str | None = None,
        profile: str | None = None,
        deferrable: bool = True,
        priority: int = 0,
        log_interval_s: float = DEFAULT_LOG_INTERVAL_S,
        result_timeout_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.flow = flow
        self.parameters = dict(parameters or {})
        self.coordinator = coordinator
        self.profile = profile
        self.deferrable = deferrable
        self.priority = priority
        self.log_interval_s = log_interval_s
        self.result_timeout_s = result_timeout_s
        self._flow_run_id: str | None = None
        self._address: str | None = None

    def _load(self) -> Flow:
        _, obj = load_target(self.flow)
        if not isinstance(obj, Flow):
            raise AirflowException(f"{self.flow} is a {type(obj).__name__}, not a @flow")
        return obj

    def execute(self, context: Mapping[str, Any]) -> Any:
        """Submit the flow run, then defer to the trigger (or follow it here)."""
        flow = self._load()
        self._address = address = _coordinator(self.coordinator, self.profile)
        ti = context["ti"]
        key = f"airflow:{ti.dag_id}:{ti.run_id}:{ti.task_id}:{ti.map_index}:{ti.try_number}"
        with Client(address) as client:
            handle = client.submit(
                flow, idempotency_key=key, priority=self.priority, **self.parameters
            )
        self._flow_run_id = handle.id
        ti.xcom_push(key="flow_run_id", value=handle.id)
        self.log.info("fleetflow flow run %s (%s) submitted to %s", handle.id, flow.name, address)
        if self.deferrable:
            self.defer(
                trigger=FleetflowFlowRunTrigger(handle.id, address, 0, self.log_interval_s),
                method_name="execute_complete",
            )
        progress = _Progress(self.log, handle.id, self.log_interval_s)
        with Client(address) as client:
            for event in client.watch(handle.id):
                progress.feed(event)
                if event.is_terminal:
                    break
        progress.summary()
        return self._outcome(handle.id, address)

    def execute_complete(self, context: Mapping[str, Any], event: Mapping[str, Any]) -> Any:
        """Back from the trigger: return the flow's result or fail with its error."""
        flow_run_id = event["flow_run_id"]
        self._flow_run_id = flow_run_id
        address = _coordinator(self.coordinator, self.profile)
        return self._outcome(flow_run_id, address)

    def _outcome(self, flow_run_id: str, address: str) -> Any:
        with Client(address) as client:
            try:
                result = client.result(flow_run_id, timeout=self.result_timeout_s)
            except Exception as exc:
                notes = "\n".join(getattr(exc, "__notes__", ()))
                if notes:
                    self.log.error("fleetflow flow run %s failed:\n%s", flow_run_id, notes)
                raise FleetflowFlowRunError(
                    f"fleetflow flow run {flow_run_id} failed: {_describe(exc)}"
                ) from exc
        self.log.info("fleetflow flow run %s completed", flow_run_id)
        return result

    def on_kill(self) -> None:
        """The task was killed while running here: cancel the flow run."""
        if self._flow_run_id is None:
            return
        address = self._address or _coordinator(self.coordinator, self.profile)
        with Client(address) as client:
            cancelled = client.cancel(self._flow_run_id)
        self.log.info(
            "fleetflow flow run %s cancelled (%d task runs)", self._flow_run_id, cancelled
        )


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "type_name", None) or type(exc).__qualname__
    message = exc.args[0] if getattr(exc, "type_name", None) and exc.args else str(exc)
    return f"{name}: {message}"
