"""Protocol messages <-> core records. The only core-facing module that imports the API.

Requests reach these functions already checked against the bounds table
(:mod:`fleetflow_coordinator.bounds`, applied by the edge interceptor).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetflow.api.v1 import common_pb2, coordinator_service_pb2, worker_service_pb2
from fleetflow.store.refs import items_from_proto, ref_from_proto

from fleetflow_coordinator import lease_wire
from fleetflow_coordinator.core import Arg, ArgKind, InvalidFlowSpec, NodeSpec, Outcome
from fleetflow_coordinator.core.model import (
    EventRecord,
    FlowRun,
    TaskRun,
    TaskRunState,
    WorkerRecord,
)
from fleetflow_coordinator.core.queries import input_summary, node_counts
from fleetflow_coordinator.core.scheduler import LeaseGrant
from fleetflow_coordinator.usage import QuantileSketch, TaskUsageStats, advise
from fleetflow_coordinator.values import fill_value

__all__ = [
    "node_specs",
    "lease_to_proto",
    "flow_result_to_proto",
    "outcome_from_proto",
    "event_to_proto",
    "flow_info",
    "worker_info",
    "flow_stats",
]


def node_specs(spec: common_pb2.FlowSpec) -> list[NodeSpec]:
    """Convert a FlowSpec's nodes for the core.

    Raises:
        InvalidFlowSpec: an argument has no source.
    """
    out = []
    for i, node in enumerate(spec.nodes):
        args = []
        for arg in node.args:
            source = arg.WhichOneof("source")
            if source == "literal":
                args.append(Arg(arg.name, ArgKind.LITERAL, arg.literal, arg.mapped))
            elif source == "literal_items":
                items = list(arg.literal_items.items)
                args.append(Arg(arg.name, ArgKind.LITERAL_ITEMS, items, arg.mapped))
            elif source == "node":
                args.append(Arg(arg.name, ArgKind.NODE, arg.node, arg.mapped))
            elif source == "nodes":
                args.append(Arg(arg.name, ArgKind.NODES, list(arg.nodes.nodes), arg.mapped))
            elif source in ("ref", "stored_items"):
                try:
                    if source == "ref":
                        stored: Any = ref_from_proto(arg.ref)
                        kind = ArgKind.LITERAL
                    else:
                        stored = items_from_proto(arg.stored_items)
                        kind = ArgKind.LITERAL_ITEMS
                except ValueError as exc:
                    raise InvalidFlowSpec(
                        f"nodes[{i}] ({node.task_name}).args[{arg.name!r}].{source}: {exc}"
                    ) from None
                args.append(Arg(arg.name, kind, stored, arg.mapped))
            else:
                raise InvalidFlowSpec(
                    f"nodes[{i}] ({node.task_name}).args[{arg.name!r}]: no value source set"
                )
        out.append(
            NodeSpec(
                task_name=node.task_name,
                is_map=node.map,
                args=args,
                resources=dict(node.resources.amounts),
                retries=node.retry.retries,
                retry_delay_s=node.retry.retry_delay_seconds,
                timeout_s=node.timeout_seconds,
                retry_delays_s=tuple(node.retry.retry_delays_seconds),
                backoff=node.retry.backoff,
                max_delay_s=node.retry.max_delay_seconds,
                jitter=node.retry.jitter,
                tags=tuple(node.tags),
                concurrency_limit=node.concurrency_limit,
                pool=node.pool or "default",
                fingerprint=node.fingerprint,
            )
        )
    return out


def output_literal(spec: common_pb2.FlowSpec) -> Any:
    """The flow's constant output: pickled bytes, or where the client stored it.

    Raises:
        InvalidFlowSpec: ``output_ref`` is malformed.
    """
    if spec.HasField("output_ref"):
        try:
            return ref_from_proto(spec.output_ref)
        except ValueError as exc:
            raise InvalidFlowSpec(f"output_ref: {exc}") from None
    return spec.output_literal


def value_to_proto(value: Any) -> common_pb2.Value:
    """Wrap a value the core holds (pickled bytes, a list, a stored reference)."""
    out = common_pb2.Value()
    fill_value(out, value)
    return out


def flow_result_to_proto(flow: FlowRun, value: Any) -> common_pb2.Value:
    """A completed flow run's result; a large map output comes as ``node_values``."""
    out = common_pb2.Value()
    node = flow.output_node
    if isinstance(value, list) and node is not None and flow.nodes[node].is_map:
        fill_value(out, value, flow_run_id=flow.id, node=node)
    else:
        fill_value(out, value)
    return out


def lease_to_proto(grant: LeaseGrant) -> worker_service_pb2.Lease:
    """Build the Lease message for one grant."""
    response = worker_service_pb2.LeaseTasksResponse()
    add_leases(response.leases, [grant])
    return response.leases[0]


def add_leases(
    leases: Any,
    grants: Iterable[LeaseGrant],
    inline_max_bytes: int = 64 << 10,
    map_inline_bytes: int = 16 << 20,
) -> None:
    """Append a Lease message per grant to a response's repeated ``leases`` field.

    Each lease is written as wire bytes and parsed in C, the fields a batch's
    members share encoded once (:mod:`fleetflow_coordinator.lease_wire`):
    about a third of the cost of building it field by field, once per task run.

    Args:
        leases: The response's repeated ``leases`` field.
        grants: What the core granted.
        inline_max_bytes: The store's inline limit, bytes.
        map_inline_bytes: Inline results kept per map node, bytes (see
            :func:`~fleetflow_coordinator.values.inline_limit`).
    """
    lease_wire.add_leases(leases, grants, inline_max_bytes, map_inline_bytes)


def outcome_from_proto(outcome: worker_service_pb2.Outcome) -> Outcome:
    """Convert one reported outcome; the error stays an opaque TaskError message.

    The numbers were clamped by :func:`fleetflow_coordinator.bounds.check_request`.
    """
    which = outcome.WhichOneof("result")
    duration = outcome.duration_seconds  # clamped by bounds.check_request
    if which == "value":
        return Outcome(
            outcome.task_run_id, outcome.attempt, value=outcome.value, duration_s=duration
        )
    if which == "items":
        return Outcome(
            outcome.task_run_id,
            outcome.attempt,
            items=list(outcome.items.items),
            duration_s=duration,
        )
    if which in ("ref", "stored_items"):
        try:
            if which == "ref":
                return Outcome(
                    outcome.task_run_id,
                    outcome.attempt,
                    value=ref_from_proto(outcome.ref),
                    duration_s=duration,
                )
            return Outcome(
                outcome.task_run_id,
                outcome.attempt,
                items=items_from_proto(outcome.stored_items),
                duration_s=duration,
            )
        except ValueError as exc:
            return Outcome(
                outcome.task_run_id,
                outcome.attempt,
                error=common_pb2.TaskError(
                    type="fleetflow.ProtocolError", message=f"outcome.{which}: {exc}"
                ),
                infrastructure=True,
                duration_s=duration,
            )
    error = (
        outcome.error
        if which == "error"
        else common_pb2.TaskError(
            type="fleetflow.ProtocolError", message="outcome carried no result"
        )
    )
    return Outcome(
        outcome.task_run_id,
        outcome.attempt,
        error=error,
        infrastructure=outcome.infrastructure,
        timed_out=outcome.timed_out,
        non_retryable=outcome.non_retryable,
        retry_delay_s=outcome.retry_delay_seconds if outcome.retry_requested else None,
        duration_s=duration,
    )


def event_to_proto(flow_run_id: str, event: EventRecord) -> common_pb2.Event:
    """Build the Event message for one log entry."""
    message = common_pb2.Event(
        seq=event.seq,
        kind=int(event.kind),
        flow_run_id=flow_run_id,
        time=event.time,
        node=event.node,
        task_name=event.task_name,
        task_run_id=event.task_run_id,
        index=event.index,
        attempt=event.attempt,
        worker_id=event.worker_id,
        count=event.count,
        message=event.message,
        retry_at=event.retry_at,
    )
    if event.error is not None:
        message.error.CopyFrom(event.error)
    return message


def flow_info(
    flow: FlowRun, reasons: dict[int, str] | None = None
) -> coordinator_service_pb2.FlowRunInfo:
    """Summarise a flow run with per-node task run counts.

    Args:
        flow: The flow run.
        reasons: ``{node index: why it cannot be scheduled}``
            (``Scheduler.unschedulable_reasons``); None for none.
    """
    reasons = reasons or {}
    info = coordinator_service_pb2.FlowRunInfo(
        flow_run_id=flow.id,
        name=flow.name,
        state=int(flow.state),
        created_at=flow.created_at,
        ended_at=flow.ended_at,
        last_seq=len(flow.events),
    )
    for node in flow.nodes:
        total, c, end = node_counts(flow, node)
        info.nodes.add(
            node=node.index,
            task_name=node.task_name,
            map=node.is_map,
            total=-1 if total is None else total,
            unexpanded_end=0 if end is None else int(end),
            unschedulable_reason=reasons.get(node.index, ""),
            pending=c[TaskRunState.PENDING],
            scheduled=c[TaskRunState.SCHEDULED],
            running=c[TaskRunState.RUNNING],
            awaiting_retry=c[TaskRunState.AWAITING_RETRY],
            completed=c[TaskRunState.COMPLETED],
            failed=c[TaskRunState.FAILED],
            upstream_failed=c[TaskRunState.UPSTREAM_FAILED],
            cancelled=c[TaskRunState.CANCELLED],
            timed_out=c[TaskRunState.TIMED_OUT],
        )
    return info


def task_run_summary(tr: TaskRun) -> coordinator_service_pb2.TaskRunSummary:
    """A task run as one row of a list: place, state, last error's first line, inputs."""
    error = tr.error
    first_line = ""
    if error is not None and (error.type or error.message):
        message = (error.message or "").strip().splitlines()
        kind = (error.type or "").removeprefix("builtins.")
        first_line = f"{kind}: {message[0] if message else ''}"[:500]
    summary, item = input_summary(tr)
    return coordinator_service_pb2.TaskRunSummary(
        task_run_id=tr.id,
        node=tr.node.index,
        task_name=tr.node.task_name,
        index=tr.index,
        state=int(tr.state),
        attempt=tr.attempt,
        worker_id=tr.worker_id or "",
        error=first_line,
        input_summary=summary,
        input_item=item,
    )


def worker_info(
    worker: WorkerRecord, now: float, gpus: tuple[str, ...] = ()
) -> coordinator_service_pb2.WorkerInfo:
    """Describe a connected worker; ``now`` gives its heartbeat age, ``gpus`` its GPU lines."""
    return coordinator_service_pb2.WorkerInfo(
        worker_id=worker.worker_id,
        hostname=worker.hostname,
        pid=worker.pid,
        capacity=common_pb2.Resources(amounts=worker.capacity),
        allocated=common_pb2.Resources(amounts=worker.allocated),
        running=len(worker.running),
        task_names=sorted(worker.task_names),
        cpu_percent=worker.cpu_percent,
        memory_available=worker.memory_available,
        last_seen_at=worker.last_seen,
        heartbeat_age_seconds=max(0.0, now - worker.last_seen),
        gpus=list(gpus),
    )


def _task_usage(stats: TaskUsageStats) -> coordinator_service_pb2.TaskUsage:
    def quantiles(sketch: QuantileSketch) -> coordinator_service_pb2.UsageQuantiles:
        return coordinator_service_pb2.UsageQuantiles(**sketch.summary())

    return coordinator_service_pb2.TaskUsage(
        node=stats.node,
        task_name=stats.task_name,
        requested=common_pb2.Resources(amounts=stats.requested),
        measured_attempts=stats.measured,
        cpu_cores=quantiles(stats.cpu_cores),
        cpu_seconds=quantiles(stats.cpu_seconds),
        peak_memory_bytes=quantiles(stats.peak_memory_bytes),
        gpu_measured_attempts=stats.gpu_measured,
        peak_gpu_memory_bytes=quantiles(stats.peak_gpu_memory_bytes),
        gpu_utilization_percent=quantiles(stats.gpu_utilization_percent),
        duration_seconds=quantiles(stats.duration_seconds),
        advice=[
            coordinator_service_pb2.ResourceAdvice(
                resource=a.resource,
                requested=a.requested,
                used_p95=a.used_p95,
                suggested=a.suggested,
                message=a.message,
            )
            for a in advise(stats)
        ],
    )


def flow_stats(
    flow_run_id: str,
    tasks: list[TaskUsageStats],
    fleet_tasks: list[TaskUsageStats],
    time_in_state: dict[str, float],
    folded_seq: int,
) -> coordinator_service_pb2.GetFlowRunStatsResponse:
    """Build the GetFlowRunStats answer from usage rows and the time fold."""
    return coordinator_service_pb2.GetFlowRunStatsResponse(
        flow_run_id=flow_run_id,
        tasks=[_task_usage(t) for t in tasks],
        fleet_tasks=[_task_usage(t) for t in fleet_tasks],
        time=coordinator_service_pb2.TimeInState(
            pending_seconds=time_in_state.get("pending", 0.0),
            queued_seconds=time_in_state.get("queued", 0.0),
            running_seconds=time_in_state.get("running", 0.0),
            awaiting_retry_seconds=time_in_state.get("awaiting_retry", 0.0),
        ),
        folded_seq=folded_seq,
    )
