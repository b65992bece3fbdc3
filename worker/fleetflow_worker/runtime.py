"""The worker's asyncio shell: register, lease, execute, report, heartbeat, drain.

One gRPC channel (LeaseTasks, ReportOutcomes and ReleaseLeases travel as
messages of one WorkerSession stream on it, see :mod:`fleetflow_worker._session`)
and four concurrent loops:

* **lease**: long-polls LeaseTasks for as many task runs as there are free
  slots (the coordinator fits them to the registered capacity); the outcome
  reporter asks for more in ReportOutcomes too, and the two asks share the
  free slots through :meth:`~fleetflow_worker.state.AttemptTable.reserve`, so
  together they never ask for more than ``max_concurrency``;
* **execute**: one asyncio task per attempt (:mod:`fleetflow_worker._execute`);
* **report**: batches outcomes into ReportOutcomes (:mod:`fleetflow_worker._reporter`);
* **heartbeat**: renews leases, sends live usage, applies cancellations
  (an ``async def`` attempt is cancelled, a task process killed).

Every RPC failure is retried with capped, jittered backoff, and an answer
saying the coordinator does not know this worker (it restarted) triggers a
new registration, so a coordinator restart never stops the worker.

A drain (SIGTERM) stops leasing, lets running attempts finish within the
grace period, then kills what still runs and hands it back with
ReleaseLeases so the coordinator re-queues it at once. A coordinator without
that RPC gets a ``WorkerShutDown`` infrastructure failure for each instead,
which re-queues it at once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator, Mapping, Sequence

import grpc
import structlog
from fleetflow.api.v1 import common_pb2, worker_service_pb2, worker_service_pb2_grpc
from fleetflow.execution import Task

from fleetflow_worker._codec import encode_error, to_outcome
from fleetflow_worker._data import DataPlane
from fleetflow_worker._execute import AttemptRunner
from fleetflow_worker._executors import make_executor
from fleetflow_worker._gpu_usage import GpuSampler
from fleetflow_worker._loop_watch import watch_loop
from fleetflow_worker._reporter import OutcomeReporter
from fleetflow_worker._rpc import CoordinatorConnection, channel_options, recovered, supervised
from fleetflow_worker._session import SessionStub
from fleetflow_worker.backoff import Backoff
from fleetflow_worker.capacity import sample_usage
from fleetflow_worker.errors import WorkerShutDown
from fleetflow_worker.gpus import plan_gpus
from fleetflow_worker.settings import WorkerSettings
from fleetflow_worker.state import AttemptKey, AttemptTable, Reservation

__all__ = ["Worker"]

log = structlog.get_logger()

#: Heartbeat interval when the coordinator gives none, seconds.
_DEFAULT_HEARTBEAT_S = 5.0


class Worker:
    """Runs the tasks of ``tasks`` for one coordinator until stopped.

    Args:
        settings: Address, identity, capacity and timing.
        tasks: ``{task_name: Task}`` this worker offers (at least one).
        module_specs: The ``--module`` values the tasks came from; pool
            processes import them again to find plain ``def`` tasks by name.

    Raises:
        ValueError: ``tasks`` is empty.
        fleetflow_worker.gpus.GpuSelectionError: ``settings.gpus`` names a
            GPU this machine does not show.
    """

    def __init__(
        self, settings: WorkerSettings, tasks: Mapping[str, Task], module_specs: Sequence[str]
    ) -> None:
        if not tasks:
            raise ValueError("a worker needs at least one task; check its --module options")
        self.settings = settings
        self.tasks = dict(tasks)
        #: {task name: fingerprint} reported at registration; "" for any_version tasks.
        self.fingerprints = {
            name: "" if task.any_version else task.fingerprint for name, task in self.tasks.items()
        }
        self.module_specs = list(module_specs)
        self.table = AttemptTable(settings.max_concurrency)
        #: The GPUs offered (discovered through NVML, restricted, overridden).
        self.gpus = plan_gpus(settings.gpus, settings.resources.get("gpu"))
        #: Announced at registration: the settings' capacity plus the GPUs'.
        self.capacity = {**self.gpus.capacity, **settings.capacity}
        #: Measures GPU attempts (NVML open while the worker runs).
        self.gpu_sampler = GpuSampler(self.gpus.devices)
        #: Runs plain ``def`` attempts: the process pool, threads or a Dask cluster.
        self.pool = make_executor(
            settings,
            self.tasks,
            self.module_specs,
            gpu_slots=self.gpus.slots,
            gpu_sampler=self.gpu_sampler,
        )
        #: The capacity the coordinator last accepted (a Dask cluster's changes).
        self._capacity_told: dict[str, float] = {}
        self.reporter = OutcomeReporter(
            self._send_outcomes,
            self.table.acknowledged,
            batch_size=settings.report_batch_size,
            batch_bytes=settings.report_batch_bytes,
            backoff=self._backoff(),
        )
        #: The result store as this worker reaches it (set up at registration).
        self.data = DataPlane(
            url=settings.result_store,
            direct=settings.result_store_direct,
            spool_dir=settings.spool_dir,
            spool_max_bytes=settings.spool_max_bytes,
        )
        self.runner = AttemptRunner(
            settings.worker_id,
            self.tasks,
            self.pool,
            self.table,
            on_outcome=self.data.deliver(self.reporter.put, encode_error),
            on_slot_freed=self._slot_freed,
            data=self.data,
        )
        #: Lease TTL and heartbeat interval from the last registration, seconds.
        self.lease_ttl_s = 0.0
        self.heartbeat_interval_s = _DEFAULT_HEARTBEAT_S
        self._stub: worker_service_pb2_grpc.WorkerServiceStub | None = None
        self._connection: CoordinatorConnection | None = None
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._registrations = 0
        self._register_lock = asyncio.Lock()
        #: {loop name: asyncio task}: "heartbeat", "report", "lease".
        self._loops: dict[str, asyncio.Task[None]] = {}

    # ----------------------------------------------------------------- control

    def stop(self, *, force: bool = False) -> None:
        """Begin a graceful drain; ``force=True`` skips the rest of the grace period.

        Safe to call more than once and from a signal handler on the loop.
        """
        if not self._stopping.is_set():
            log.info("worker_draining", running=self.table.running, queued=len(self.reporter))
            self._stopping.set()
            self._slot_free.set()
        if force and not self._forced.is_set():
            log.warning("worker_stopping_now", running=self.table.running)
            self._forced.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`, then drain; returns when everything is closed.

        Raises:
            fleetflow_worker._pool.PoolStartError: pool processes could not
                import the user modules.
        """
        options = channel_options(self.settings.backoff_cap_s)
        # Several addresses: calls follow the active coordinator (see _rpc.py).
        connection = CoordinatorConnection(
            self.settings.coordinator, options, channel=self.settings.credentials.aio_channel
        )
        # LeaseTasks, ReportOutcomes, ReleaseLeases over one stream (see _session.py)
        session = SessionStub(connection, metadata=self.settings.credentials.call_metadata())
        self._stub = session  # type: ignore[assignment]
        self._connection = connection
        with structlog.contextvars.bound_contextvars(worker_id=self.settings.worker_id):
            self._warn_any_version()
            try:
                self.gpu_sampler.open()
                if self.pool.name != "process" or any(not t.is_async for t in self.tasks.values()):
                    await self.pool.start()
                await self._refresh_capacity()
                if await self._register(give_up_on_stop=True):
                    for name, loop in (
                        ("heartbeat", self._heartbeat_loop),
                        ("report", self.reporter.run),
                        ("lease", self._lease_loop),
                        ("loop-watch", lambda: watch_loop(self._blocked_warning_s)),
                    ):
                        self._loops[name] = asyncio.create_task(
                            supervised(name, loop), name=f"fleetflow-worker-{name}"
                        )
                await self._stopping.wait()
                await self._drain()
            finally:
                leftovers = [*self._loops.values(), *self.runner.attempts]  # if run() was cancelled
                for leftover in leftovers:
                    leftover.cancel()
                await asyncio.gather(*leftovers, return_exceptions=True)
                self.pool.kill()
                await self.pool.close()
                self.gpu_sampler.close()
                await session.close()
                await connection.close()
                self.data.close()
                log.info("worker_stopped")

    def _blocked_warning_s(self) -> float:
        """A stall of the loop worth a warning: a quarter of the lease TTL, at least 1 s."""
        return max(1.0, self.lease_ttl_s / 4)

    def _warn_any_version(self) -> None:
        """Say loudly that task runs may meet code other than what they were submitted with."""
        if self.settings.any_version:
            log.warning(
                "worker_any_version",
                message="--any-version: this worker runs task runs whatever version of the "
                "tasks' code they were submitted with; results may come from code other "
                "than the client's",
                tasks=len(self.tasks),
            )
        for name, task in sorted(self.tasks.items()):
            if task.any_version:
                log.warning(
                    "task_any_version",
                    task_name=name,
                    message="@task(any_version=True): runs whatever version was submitted",
                )

    # ------------------------------------------------------------ registration

    async def _register(self, *, give_up_on_stop: bool) -> bool:
        """RegisterWorker, retrying until it succeeds; False if given up on stop.

        The request lists the attempts still held (a re-registration after a
        coordinator restart), so the coordinator can re-attach them.
        """
        backoff = self._backoff()
        while not (give_up_on_stop and self._stopping.is_set()):
            request = worker_service_pb2.RegisterWorkerRequest(
                worker_id=self.settings.worker_id,
                capacity=common_pb2.Resources(amounts=self.capacity),
                task_names=sorted(self.tasks),
                hostname=socket.gethostname(),
                pid=os.getpid(),
                running=self._held(),
                pools=list(self.settings.pools),
                gpus=self.gpus.describe(),
                task_fingerprints=self.fingerprints,
                any_version=self.settings.any_version,
            )
            try:
                response = await self._rpc().RegisterWorker(
                    request, timeout=self.settings.rpc_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                delay = self._rpc_failed("register_worker", backoff, exc)
                await (self._pause(delay) if give_up_on_stop else asyncio.sleep(delay))
                continue
            self._capacity_told = dict(request.capacity.amounts)
            self._apply_registration(response)
            await self._connect_store()
            return True
        return False

    async def _connect_store(self) -> None:
        """Learn where the result store is (after every registration: it may have moved)."""
        try:
            channel = None if self._connection is None else self._connection.current_channel()
            await self.data.connect(channel)
        except (grpc.aio.AioRpcError, ValueError, OSError) as exc:
            # Leases that need the store fail as infrastructure failures naming
            # the cause; the next registration tries again.
            log.warning("result_store_unavailable", error=str(exc))

    def _apply_registration(self, response: worker_service_pb2.RegisterWorkerResponse) -> None:
        self._registrations += 1
        self.lease_ttl_s = response.lease_ttl_seconds
        interval = response.heartbeat_interval_seconds
        if interval <= 0:
            interval = self.lease_ttl_s / 3 if self.lease_ttl_s > 0 else _DEFAULT_HEARTBEAT_S
        self.heartbeat_interval_s = max(0.05, interval)
        log.info(
            "worker_registered",
            coordinator=self.settings.coordinator,
            tasks=sorted(self.tasks),
            capacity=self.capacity,
            gpus=self.gpus.describe(),
            lease_ttl_s=self.lease_ttl_s,
            heartbeat_interval_s=self.heartbeat_interval_s,
            registrations=self._registrations,
        )

    async def _reregister(self, seen: int) -> None:
        """Register again after an answer saying this worker is unknown.

        Args:
            seen: The registration count when the RPC that said so was sent;
                if another loop registered since, nothing is done.
        """
        async with self._register_lock:
            if self._registrations == seen:
                log.warning("worker_unknown_to_coordinator")
                await self._register(give_up_on_stop=False)

    # ------------------------------------------------------------------- loops

    async def _lease_loop(self) -> None:
        backoff = self._backoff()
        while not self._stopping.is_set():
            # Freed slots go to the next ReportOutcomes when one is due: it
            # asks for leases too, and saves a LeaseTasks round trip.
            if self.table.free_slots == 0 or self.reporter.asks_next:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            seen = self._registrations
            with self._reserved() as reservation:
                request = worker_service_pb2.LeaseTasksRequest(
                    worker_id=self.settings.worker_id,
                    max_task_runs=reservation.remaining,
                    wait_seconds=self.settings.lease_wait_s,
                    max_batch=self.settings.max_batch,
                )
                try:
                    response = await self._rpc().LeaseTasks(
                        request, timeout=self.settings.lease_wait_s + self.settings.rpc_timeout_s
                    )
                except grpc.aio.AioRpcError as exc:
                    response = None
                    delay = self._rpc_failed("lease_tasks", backoff, exc)
                else:
                    self.runner.start_all(response.leases, reservation)
            if response is None:
                await self._pause(delay)
                continue
            if response.known:
                recovered("lease_tasks", backoff)
            else:
                await self._reregister(seen)
                await self._pause(backoff.failed())  # no tight loop if it stays unknown

    async def _heartbeat_loop(self) -> None:
        backoff = self._backoff()
        while True:
            seen = self._registrations
            usage = sample_usage()
            await self._refresh_capacity()
            request = worker_service_pb2.HeartbeatRequest(
                worker_id=self.settings.worker_id,
                running=self._held(),
                cpu_percent=usage.cpu_percent,
                memory_available=usage.memory_available,
            )
            if self.capacity != self._capacity_told:  # e.g. Dask workers joined or left
                request.capacity.amounts.update(self.capacity)
            try:
                response = await self._rpc().Heartbeat(request, timeout=self._heartbeat_timeout_s)
            except grpc.aio.AioRpcError as exc:
                delay = self._rpc_failed("heartbeat", backoff, exc)
                await asyncio.sleep(min(delay, self.heartbeat_interval_s))
                continue
            recovered("heartbeat", backoff)
            if request.HasField("capacity") and response.known:
                self._capacity_told = dict(request.capacity.amounts)
            if not response.known:
                await self._reregister(seen)
            for held in response.cancel:
                key = AttemptKey(held.task_run_id, held.attempt)
                flow_run_id = self.runner.flow_run_id(key)
                action = self.runner.cancel(key)
                log.info(
                    "task_run_cancel",
                    flow_run_id=flow_run_id,
                    task_run_id=key[0],
                    attempt=key[1],
                    action=action.value,
                )
            await asyncio.sleep(self.heartbeat_interval_s)

    # ------------------------------------------------------------------- drain

    async def _drain(self) -> None:
        lease_loop = self._loops.get("lease")
        if lease_loop is not None:  # ask for nothing more
            lease_loop.cancel()
            await asyncio.gather(lease_loop, return_exceptions=True)
        grace_s = self.settings.drain_grace_s
        if not await self._wait_for_attempts(grace_s):
            forced = self._forced.is_set()
            if not forced:
                log.warning("drain_grace_over", running=self.table.running, grace_s=grace_s)
            stopped = self.runner.abort_all()
            await self._wait_for_attempts(5.0, stop_early_on_force=False)
            await self._hand_back(stopped, WorkerShutDown(grace_s, forced=forced))
        flush_s = 1.0 if self._forced.is_set() else self.settings.flush_timeout_s
        await self.data.settle(flush_s)  # results still uploading to the coordinator
        if self._loops and not await self.reporter.flush(flush_s):
            log.error("outcomes_not_reported", count=len(self.reporter), flush_timeout_s=flush_s)

    async def _hand_back(self, keys: Sequence[AttemptKey], reason: WorkerShutDown) -> None:
        """Tell the coordinator the stopped attempts will never report, so it re-queues them.

        Uses ReleaseLeases; if the coordinator does not implement it (or the
        call fails), each attempt is reported as an infrastructure failure
        with ``reason`` instead, which also re-queues it at once.
        """
        if not keys or not self._loops:
            return
        released = [worker_service_pb2.HeldTaskRun(task_run_id=k[0], attempt=k[1]) for k in keys]
        request = worker_service_pb2.ReleaseLeasesRequest(
            worker_id=self.settings.worker_id, released=released
        )
        try:
            await self._rpc().ReleaseLeases(request, timeout=min(5.0, self.settings.rpc_timeout_s))
        except grpc.aio.AioRpcError as exc:
            emit = log.info if exc.code() == grpc.StatusCode.UNIMPLEMENTED else log.warning
            emit(
                "release_leases_failed",
                code=exc.code().name,
                details=exc.details(),
                fallback="report_worker_shut_down",
                count=len(keys),
            )
            for key in keys:
                self.reporter.put(to_outcome(*key, encode_error(reason), infrastructure=True))
            return
        log.info("leases_released", count=len(keys), via="ReleaseLeases")

    async def _wait_for_attempts(
        self, timeout_s: float, *, stop_early_on_force: bool = True
    ) -> bool:
        """Wait until no attempt runs; False on timeout (or on a forced stop)."""
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            async with asyncio.timeout(timeout_s):
                while attempts := self.runner.attempts:
                    if forced.done():
                        if stop_early_on_force:
                            return False
                        await asyncio.wait(attempts, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await asyncio.wait([*attempts, forced], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            return False
        finally:
            forced.cancel()
        return True

    # ----------------------------------------------------------------- helpers

    def _held(self) -> list[worker_service_pb2.HeldTaskRun]:
        return [
            worker_service_pb2.HeldTaskRun(task_run_id=k.task_run_id, attempt=k.attempt)
            for k in self.table.held()
        ]

    def _rpc(self) -> worker_service_pb2_grpc.WorkerServiceStub:
        if self._stub is None:
            raise RuntimeError("Worker.run() has not opened the channel yet")
        return self._stub

    async def _send_outcomes(self, outcomes: Sequence[worker_service_pb2.Outcome]) -> Sequence[int]:
        # Ask for the next leases in the same call (none while draining), so a
        # finished task is followed by the next without a LeaseTasks round trip.
        # The slots asked for are reserved, so the long poll cannot ask for them too.
        with self._reserved(0 if self._stopping.is_set() else None) as reservation:
            response = await self._rpc().ReportOutcomes(
                worker_service_pb2.ReportOutcomesRequest(
                    worker_id=self.settings.worker_id,
                    outcomes=outcomes,
                    max_new_leases=reservation.remaining,
                    max_batch=self.settings.max_batch,
                ),
                timeout=self.settings.rpc_timeout_s,
            )
            self.runner.start_all(response.leases, reservation)
        return list(response.acks)

    @contextlib.contextmanager
    def _reserved(self, most: int | None = None) -> Iterator[Reservation]:
        """Reserve free slots for one lease request; give back what its answer did not use."""
        reservation = self.table.reserve(most)
        try:
            yield reservation
        finally:
            self.table.release(reservation)
            self._slot_free.set()  # the lease loop looks again: it may ask for what is free

    @property
    def _heartbeat_timeout_s(self) -> float:
        """A heartbeat slower than half the lease TTL is worth retrying, not awaiting."""
        if self.lease_ttl_s > 0:
            return max(0.5, min(self.settings.rpc_timeout_s, self.lease_ttl_s / 2))
        return self.settings.rpc_timeout_s

    async def _refresh_capacity(self) -> None:
        """Offer the executor's capacity (a Dask cluster's), read again at every heartbeat."""
        try:
            async with asyncio.timeout(max(0.5, min(5.0, self.heartbeat_interval_s))):
                capacity = await self.pool.capacity()
        except Exception as exc:  # noqa: BLE001 - the scheduler is away a moment: keep the last
            log.warning("executor_capacity_unavailable", executor=self.pool.name, error=str(exc))
            return
        if capacity is not None and capacity != self.capacity:
            log.info("executor_capacity", executor=self.pool.name, capacity=capacity)
            self.capacity = capacity

    def _slot_freed(self) -> None:
        self._slot_free.set()

    def _backoff(self) -> Backoff:
        return Backoff(cap_s=self.settings.backoff_cap_s)

    async def _pause(self, delay_s: float) -> None:
        """Sleep, but wake up early when the worker is stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._stopping.wait()

    def _rpc_failed(self, rpc: str, backoff: Backoff, exc: grpc.aio.AioRpcError) -> float:
        """Log a failed RPC (first of a streak, then every 20th); return the retry delay."""
        delay = backoff.failed()
        emit = log.warning if backoff.failures == 1 or backoff.failures % 20 == 0 else log.debug
        emit(
            "coordinator_rpc_failed",
            rpc=rpc,
            code=exc.code().name,
            details=exc.details(),
            failures=backoff.failures,
            retry_in_s=round(delay, 3),
        )
        return delay
