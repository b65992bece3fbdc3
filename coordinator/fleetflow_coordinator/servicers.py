"""gRPC servicers: request -> core call -> response. No scheduling decisions here.

Handlers refuse a call by raising an error of :mod:`fleetflow_coordinator.errors`;
the edge interceptor maps it to a status code (no handler picks a code).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import structlog
from fleetflow.api.v1 import (
    common_pb2,
)
from fleetflow.api.v1 import (
    coordinator_service_pb2 as cs,
)
from fleetflow.api.v1 import (
    coordinator_service_pb2_grpc as cs_grpc,
)
from fleetflow.api.v1 import (
    worker_service_pb2 as ws,
)
from fleetflow.api.v1 import (
    worker_service_pb2_grpc as ws_grpc,
)

from fleetflow_coordinator import convert
from fleetflow_coordinator.auth import current_principal
from fleetflow_coordinator.core import FlowRunState, InvalidFlowSpec
from fleetflow_coordinator.core.model import FlowRun
from fleetflow_coordinator.core.queries import attempt_history, select_task_runs
from fleetflow_coordinator.errors import AlreadyExists, NotFound, PermissionDenied, Unimplemented
from fleetflow_coordinator.observe import Observer
from fleetflow_coordinator.results import stored_usage
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.session import Session, Sessions

__all__ = ["CoordinatorServicer", "WorkerServicer"]

log = structlog.get_logger(__name__)


#: Task runs per ListTaskRuns page when the request says 0.
DEFAULT_PAGE = 100
#: Events per WatchFlowRun message.
WATCH_BATCH = 2000


class CoordinatorServicer(cs_grpc.CoordinatorServiceServicer):
    """The client-facing service."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _flow(self, flow_run_id: str) -> FlowRun:
        flow = self.rt.core.flows.get(flow_run_id)
        if flow is None:
            raise NotFound(f"no flow run {flow_run_id!r}")
        return flow

    async def SubmitFlowRun(  # noqa: N802 - generated name
        self, request: cs.SubmitFlowRunRequest, context: grpc.aio.ServicerContext
    ) -> cs.SubmitFlowRunResponse:
        """Validate and accept a flow run whole (INVALID_ARGUMENT otherwise)."""
        spec = request.spec
        try:
            nodes = convert.node_specs(spec)
            flow, created = self.rt.core.submit(
                uuid.uuid4().hex,
                spec.name,
                nodes,
                self.rt.clock(),
                output_node=spec.output_node if spec.HasField("output_node") else None,
                output_literal=convert.output_literal(spec),
                idempotency_key=request.idempotency_key,
                spec_blob=spec.SerializeToString(),
                priority=spec.priority,
                timeout_s=spec.timeout_seconds,
            )
        except InvalidFlowSpec as exc:
            raise InvalidFlowSpec(f"flow {spec.name!r}: {exc}") from None
        self.rt.after_change()
        await self.rt.durable()  # acknowledge only a stored submission
        if created:
            self.rt.metrics.flow_runs_submitted.inc()
            # debug, not info: one JSON line per flow run cost about 30 us of the
            # ~2 ms of coordinator CPU of a one-task flow (issue 18); the flow
            # run's events and fleetflow_flow_runs_submitted_total record it
            log.debug("flow_run_submitted", flow_run_id=flow.id, flow=flow.name, nodes=len(nodes))
        response = cs.SubmitFlowRunResponse(flow_run_id=flow.id, created=created)
        if request.wait_seconds > 0:  # submit and wait in one call (at most 300 s, bounds)
            await self._describe(
                flow, request.include_result, request.wait_seconds, response.flow_run
            )
        return response

    async def GetFlowRun(  # noqa: N802
        self, request: cs.GetFlowRunRequest, context: grpc.aio.ServicerContext
    ) -> cs.GetFlowRunResponse:
        """Describe a flow run; optionally long-poll until it ends."""
        response = cs.GetFlowRunResponse()
        await self._describe(
            self._flow(request.flow_run_id),
            request.include_result,
            request.wait_seconds,
            response,
        )
        return response

    async def _describe(
        self,
        flow: FlowRun,
        include_result: bool,
        wait_seconds: float,
        response: cs.GetFlowRunResponse,
    ) -> None:
        """Fill ``response`` as GetFlowRun answers, after a wait of up to ``wait_seconds``.

        The wait ends once the flow run's end is stored. It holds nothing but
        this coroutine and the flow run's end signal (shared by every waiter of
        the flow run), so SubmitFlowRun's wait costs what GetFlowRun's long
        poll costs; both are at most 300 s (bounds ``get_wait``).
        """
        ended = self.rt.durably_ended
        if wait_seconds > 0 and not ended(flow):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_seconds
            while not ended(flow):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):  # no task per wait (wait_for)
                        await self.rt.flow_end_signal(flow.id).wait()
                except TimeoutError:
                    break
        if flow.terminal and not ended(flow):
            await self.rt.durable()  # never report an end that a crash could undo
        response.info.CopyFrom(convert.flow_info(flow, self.rt.core.unschedulable_reasons(flow.id)))
        if include_result:
            if flow.state == FlowRunState.COMPLETED:
                response.result.CopyFrom(
                    convert.flow_result_to_proto(flow, self.rt.core.flow_result(flow))
                )
            elif flow.state == FlowRunState.FAILED and flow.first_error is not None:
                task_name, error, message = flow.first_error
                response.error_task_name = task_name
                if error is not None and not message:
                    response.error.CopyFrom(error)
                else:
                    if error is not None and (error.type or error.message):
                        # say what the last attempt reported (e.g. the stored
                        # object an input was missing from), not only that it failed
                        message = f"{message} (last error: {error.type}: {error.message})"
                    response.error.CopyFrom(
                        common_pb2.TaskError(
                            type="fleetflow.errors.FlowRunFailed",
                            message=f"task {task_name}: {message}" if task_name else message,
                            traceback=error.traceback if error is not None else "",
                        )
                    )

    async def ListFlowRuns(  # noqa: N802
        self, request: cs.ListFlowRunsRequest, context: grpc.aio.ServicerContext
    ) -> cs.ListFlowRunsResponse:
        """List every flow run the coordinator holds, oldest first."""
        return cs.ListFlowRunsResponse(
            flow_runs=[convert.flow_info(f) for f in self.rt.core.flows.values()]
        )

    async def ListWorkers(  # noqa: N802
        self, request: cs.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> cs.ListWorkersResponse:
        """List the connected workers (read-only)."""
        now = self.rt.clock()
        return cs.ListWorkersResponse(
            workers=[
                convert.worker_info(w, now, self.rt.usage.worker_gpus.of(w.worker_id))
                for w in self.rt.core.workers.values()
            ]
        )

    async def WatchFlowRun(  # noqa: N802
        self, request: cs.WatchFlowRunRequest, context: grpc.aio.ServicerContext
    ):
        """Stream events with seq > after_seq, ending after the terminal event."""
        flow = self._flow(request.flow_run_id)
        sent = request.after_seq
        while True:
            events = flow.events
            stored = min(flow.durable_seq, len(events))
            if sent < stored:
                batch = events[sent : min(stored, sent + WATCH_BATCH)]
                sent += len(batch)
                yield cs.WatchFlowRunResponse(
                    events=[convert.event_to_proto(flow.id, e) for e in batch]
                )
                continue
            if self.rt.durably_ended(flow) and sent >= len(events):
                return
            await self.rt.flow_signal(flow.id).wait()

    async def CancelFlowRun(  # noqa: N802
        self, request: cs.CancelFlowRunRequest, context: grpc.aio.ServicerContext
    ) -> cs.CancelFlowRunResponse:
        """Cancel a flow run; answers once the cancellation is stored."""
        cancelled = self.rt.core.cancel_flow(request.flow_run_id, self.rt.clock())
        if cancelled is None:
            raise NotFound(f"no flow run {request.flow_run_id!r}")
        self.rt.after_change()
        await self.rt.durable()
        log.info("flow_run_cancelled", flow_run_id=request.flow_run_id, task_runs=cancelled)
        return cs.CancelFlowRunResponse(cancelled=cancelled)

    async def CancelTaskRun(  # noqa: N802
        self, request: cs.CancelTaskRunRequest, context: grpc.aio.ServicerContext
    ) -> cs.CancelTaskRunResponse:
        """Cancel one task run, or every task run of a node."""
        core, now = self.rt.core, self.rt.clock()
        if request.by_node:
            cancelled = core.cancel_node(request.flow_run_id, request.node, now)
            what = f"node {request.node} of flow run {request.flow_run_id!r}"
        else:
            cancelled = core.cancel_task_run(request.task_run_id, now)
            what = f"task run {request.task_run_id}"
        if cancelled is None:
            raise NotFound(f"no {what}")
        self.rt.after_change()
        await self.rt.durable()
        return cs.CancelTaskRunResponse(cancelled=cancelled)

    async def GetTaskRun(  # noqa: N802
        self, request: cs.GetTaskRunRequest, context: grpc.aio.ServicerContext
    ) -> cs.GetTaskRunResponse:
        """One task run with its attempt history."""
        tr = self.rt.core.task_runs.get(request.task_run_id)
        if tr is None:
            raise NotFound(f"no task run {request.task_run_id}")
        response = cs.GetTaskRunResponse(
            task_run_id=tr.id,
            flow_run_id=tr.flow.id,
            node=tr.node.index,
            index=tr.index,
            task_name=tr.node.task_name,
            state=int(tr.state),
            attempt=tr.attempt,
            resources=common_pb2.Resources(amounts=tr.node.resources),
        )
        for view in attempt_history(tr):
            attempt = response.attempts.add(
                attempt=view.attempt,
                worker_id=view.worker_id,
                started_at=view.started_at,
                ended_at=view.ended_at,
                outcome=view.outcome,
                infrastructure=view.infrastructure,
                message=view.message,
            )
            if view.error is not None:
                attempt.error.CopyFrom(view.error)
            gpu = self.rt.usage.attempt_gpus.get(tr.id, view.attempt)
            if gpu is not None:
                attempt.gpu_devices.extend(gpu.devices)
                attempt.peak_gpu_memory_bytes = gpu.peak_gpu_memory_bytes
                if gpu.gpu_utilization_percent is not None:
                    attempt.gpu_utilization_percent = gpu.gpu_utilization_percent
        return response

    async def ListTaskRuns(  # noqa: N802
        self, request: cs.ListTaskRunsRequest, context: grpc.aio.ServicerContext
    ) -> cs.ListTaskRunsResponse:
        """One page of a flow run's task runs, filtered by state, task and map index."""
        flow = self._flow(request.flow_run_id)
        total, page = select_task_runs(
            flow,
            states=frozenset(request.states),
            task_name=request.task_name,
            index=request.index if request.HasField("index") else None,
            offset=request.offset,
            limit=request.limit or DEFAULT_PAGE,
        )
        return cs.ListTaskRunsResponse(
            total=total, task_runs=[convert.task_run_summary(tr) for tr in page]
        )

    async def SetConcurrencyLimit(  # noqa: N802
        self, request: cs.SetConcurrencyLimitRequest, context: grpc.aio.ServicerContext
    ) -> cs.SetConcurrencyLimitResponse:
        """Set or remove a named concurrency limit; stored, so it outlives a restart."""
        self.rt.set_limit(request.tag, request.limit if request.limit >= 0 else None)
        self.rt.after_change()
        await self.rt.durable()
        log.info("concurrency_limit_set", tag=request.tag, limit=request.limit)
        return cs.SetConcurrencyLimitResponse()

    async def GetDemand(  # noqa: N802
        self, request: cs.GetDemandRequest, context: grpc.aio.ServicerContext
    ) -> cs.GetDemandResponse:
        """Queued demand per pool and resource shape, for autoscalers."""
        waits = self.rt.core.limit_waits()
        return cs.GetDemandResponse(
            demand=[
                cs.Demand(
                    pool=pool,
                    resources=common_pb2.Resources(amounts=resources),
                    waiting=waiting,
                    task_names=names,
                    unschedulable_reason=reason,
                    waiting_on_limits=waits.get((pool, tuple(sorted(resources.items()))), []),
                )
                for pool, resources, waiting, names, reason in self.rt.core.demand()
            ]
        )

    async def ListConcurrencyLimits(  # noqa: N802
        self, request: cs.ListConcurrencyLimitsRequest, context: grpc.aio.ServicerContext
    ) -> cs.ListConcurrencyLimitsResponse:
        """Every named limit with its use now and where it was set."""
        api = self.rt.api_limits
        return cs.ListConcurrencyLimitsResponse(
            limits=[
                cs.ConcurrencyLimit(
                    tag=tag,
                    limit=limit,
                    running=running,
                    waiting=waiting,
                    source="api" if tag in api else "settings",
                )
                for tag, limit, running, waiting in self.rt.core.limits_view()
            ]
        )

    async def GetFlowRunStats(  # noqa: N802
        self, request: cs.GetFlowRunStatsRequest, context: grpc.aio.ServicerContext
    ) -> cs.GetFlowRunStatsResponse:
        """Measured usage against requests (with advice) and time per task run state."""
        flow = self._flow(request.flow_run_id)
        observer = self.rt.observer
        if observer is None:  # no dashboard: fold on demand
            rt = self.rt
            observer = rt.observer = Observer(lambda: rt.core, rt.clock, usage=rt.usage)
        for _ in range(1000):  # bounded: FOLD_BUDGET events per pass, yielding between
            if observer.fold_flow(flow.id):
                break
            await asyncio.sleep(0)
        digest = observer.digest(flow.id)
        usage = self.rt.usage
        rows = usage.flow(flow.id)
        response = convert.flow_stats(
            flow.id,
            rows,
            usage.fleet(r.task_name for r in rows),
            digest.time_in_state(self.rt.clock(), flow.terminal),
            digest.cursor,
        )
        stored, objects, largest = stored_usage(flow)
        response.stored.bytes, response.stored.objects = stored, objects
        response.stored.largest = largest
        return response

    async def PruneFlowRuns(  # noqa: N802
        self, request: cs.PruneFlowRunsRequest, context: grpc.aio.ServicerContext
    ) -> cs.PruneFlowRunsResponse:
        """Delete finished flow runs older than the given age (retention on demand)."""
        pruned = await self.rt.prune(request.older_than_seconds)
        return cs.PruneFlowRunsResponse(pruned_flow_run_ids=pruned)


class WorkerServicer(ws_grpc.WorkerServiceServicer):
    """The worker-facing service.

    A worker id belongs to the credential that registered it (see
    :meth:`_check_owner`); with authentication off every caller is the same
    anonymous credential, so only the host-and-pid check applies.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        #: {worker_id: name of the credential that registered it}
        self._owners: dict[str, str] = {}
        #: The open WorkerSession streams, one per worker id.
        self.sessions = Sessions()

    def _check_owner(self, rpc: str, worker_id: str, *, registering: bool = False) -> None:
        """Refuse a call naming a worker id that another credential registered.

        Raises:
            PermissionDenied: counted in ``fleetflow_worker_identity_refused``
                and logged; the named worker is left untouched. A registration
                may take over the id of a worker that is no longer connected.
        """
        principal = current_principal()
        owner = self._owners.get(worker_id)
        if owner is None or owner == principal.name:
            return
        if registering and worker_id not in self.rt.core.workers:
            return  # the old holder is gone: the id is free again
        self.rt.metrics.identity_refused.labels(rpc).inc()
        log.warning(
            "worker_identity_refused",
            rpc=rpc,
            worker_id=worker_id,
            credential=principal.name,
            owner=owner,
        )
        raise PermissionDenied(
            f"worker_id {worker_id!r} was registered with another credential; "
            f"{principal.name!r} may act only for the workers it registered"
        )

    def _own(self, worker_id: str) -> None:
        owners = self._owners
        owners[worker_id] = current_principal().name
        if len(owners) > 2 * len(self.rt.core.workers) + 1000:  # forget departed workers
            workers = self.rt.core.workers
            self._owners = {w: o for w, o in owners.items() if w in workers}

    async def RegisterWorker(  # noqa: N802
        self, request: ws.RegisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> ws.RegisterWorkerResponse:
        """Add or refresh a worker."""
        self._check_owner("RegisterWorker", request.worker_id, registering=True)
        existing = self.rt.core.workers.get(request.worker_id)
        if (
            existing is not None
            and (existing.hostname, existing.pid)
            != (request.hostname or socket.gethostname(), request.pid)
            and self.rt.clock() - existing.last_seen < self.rt.settings.lease_ttl_s
        ):
            raise AlreadyExists(
                f"worker_id {request.worker_id!r} belongs to a live worker "
                f"({existing.hostname} pid {existing.pid}); pick another --worker-id"
            )
        capacity = dict(request.capacity.amounts)  # within the bounds table's maxima
        self.rt.core.register_worker(
            request.worker_id,
            capacity,
            frozenset(request.task_names),
            self.rt.clock(),
            hostname=request.hostname or socket.gethostname(),
            pid=request.pid,
            running=[(h.task_run_id, h.attempt) for h in request.running],
            pools=frozenset(request.pools) or frozenset({"default"}),
            task_fingerprints=dict(request.task_fingerprints),
            any_version=request.any_version,
        )
        self._own(request.worker_id)
        self.rt.usage.worker_gpus.register(request.worker_id, request.gpus, self.rt.core.workers)
        self.rt.after_change()
        self.rt.metrics.registrations.inc()
        log.info(
            "worker_registered",
            worker_id=request.worker_id,
            capacity=capacity,
            tasks=len(request.task_names),
            any_version=request.any_version,
        )
        settings = self.rt.settings
        return ws.RegisterWorkerResponse(
            lease_ttl_seconds=settings.lease_ttl_s,
            heartbeat_interval_seconds=settings.heartbeat_interval_s,
        )

    async def Heartbeat(  # noqa: N802
        self, request: ws.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> ws.HeartbeatResponse:
        """Renew leases and reconcile running attempts."""
        self._check_owner("Heartbeat", request.worker_id)
        known, cancel = self.rt.core.heartbeat(
            request.worker_id,
            [(h.task_run_id, h.attempt) for h in request.running],
            self.rt.clock(),
            cpu_percent=request.cpu_percent,
            memory_available=request.memory_available,
            capacity=dict(request.capacity.amounts) if request.HasField("capacity") else None,
        )
        self.rt.after_change()
        self.rt.metrics.heartbeats.inc()
        return ws.HeartbeatResponse(
            known=known, cancel=[ws.HeldTaskRun(task_run_id=t, attempt=a) for t, a in cancel]
        )

    async def LeaseTasks(  # noqa: N802
        self, request: ws.LeaseTasksRequest, context: grpc.aio.ServicerContext
    ) -> ws.LeaseTasksResponse:
        """Long poll for up to max_task_runs leases."""
        self._check_owner("LeaseTasks", request.worker_id)
        rt = self.rt
        loop = asyncio.get_running_loop()
        # bounds.check_request made wait_seconds finite and >= 0, max_task_runs >= 1
        deadline = loop.time() + min(request.wait_seconds, rt.settings.lease_wait_max_s)
        limit = request.max_task_runs
        # The request's arrival is the sign of life; the waits below are not.
        if not rt.core.touch(request.worker_id, rt.clock()):
            return ws.LeaseTasksResponse(known=False)
        while True:
            grants = rt.core.lease(
                request.worker_id, limit, rt.clock(), max_batch=request.max_batch
            )
            if grants is None:
                return ws.LeaseTasksResponse(known=False)
            if grants:
                rt.after_change()
                rt.metrics.leased(len(grants))
                # A lease is sent only once stored: otherwise a crash could hand
                # the same attempt number to a second worker.
                await _durable_or_hand_back(rt, request.worker_id, grants)
                response = ws.LeaseTasksResponse(known=True)
                convert.add_leases(response.leases, grants, *rt.inline_limits)
                return response
            remaining = deadline - loop.time()
            if remaining <= 0:
                return ws.LeaseTasksResponse(known=True)
            await rt.wait_for_work(remaining)

    async def ReleaseLeases(  # noqa: N802
        self, request: ws.ReleaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> ws.ReleaseLeasesResponse:
        """Re-queue attempts a draining worker handed back."""
        self._check_owner("ReleaseLeases", request.worker_id)
        requeued = self.rt.core.release_leases(
            request.worker_id,
            [(h.task_run_id, h.attempt) for h in request.released],
            self.rt.clock(),
        )
        self.rt.after_change()
        await self.rt.durable()
        log.info("leases_released", worker_id=request.worker_id, requeued=requeued)
        return ws.ReleaseLeasesResponse()

    async def ReportOutcomes(  # noqa: N802
        self, request: ws.ReportOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> ws.ReportOutcomesResponse:
        """Apply a batch of outcomes; one ack each, in order."""
        self._check_owner("ReportOutcomes", request.worker_id)
        outcomes = [convert.outcome_from_proto(o) for o in request.outcomes]
        rt = self.rt
        now = rt.clock()
        acks = rt.core.report(request.worker_id, outcomes, now)
        rt.usage.record_outcomes(rt.core, request.outcomes, acks, now)
        grants = None
        if request.max_new_leases:  # piggybacked lease request, as LeaseTasks
            grants = rt.core.lease(
                request.worker_id, request.max_new_leases, now, max_batch=request.max_batch
            )
            if grants:
                rt.metrics.leased(len(grants))
        rt.after_change()
        rt.metrics.reported(acks)
        # The worker drops an outcome once acked; a lease must be stored.
        await _durable_or_hand_back(rt, request.worker_id, grants or ())
        response = ws.ReportOutcomesResponse(acks=acks)
        convert.add_leases(response.leases, grants or (), *rt.inline_limits)
        return response

    async def WorkerSession(  # noqa: N802
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        """Serve LeaseTasks, ReportOutcomes and ReleaseLeases as messages of one stream."""
        rt = self.rt
        if not rt.settings.worker_sessions:
            raise Unimplemented(
                "WorkerSession is turned off on this coordinator (worker_sessions = false); "
                "use the unary calls"
            )
        session = Session(self, context, self.sessions, rt.serving_over, rt.leads)
        await session.serve(request_iterator)


async def _durable_or_hand_back(rt: Runtime, worker_id: str, grants: Sequence[Any]) -> None:
    """Wait until the change (with ``grants``) is stored; hand the grants back if cancelled.

    A call cancelled while its leases are being stored (the worker's stream
    broke or was replaced, the worker abandoned its long poll, the coordinator
    is stopping) never sends them: the worker would not know of them, and a
    lease TTL later they would be charged as lost in transit. They are re-queued
    at once instead, uncharged, as a draining worker's hand-back is.
    """
    try:
        await rt.durable()
    except asyncio.CancelledError:
        if grants:
            rt.core.release_leases(
                worker_id,
                [(g.task_run.id, g.attempt) for g in grants],
                rt.clock(),
                why="granted but never sent: the call ended first",
            )
            rt.after_change()
        raise
