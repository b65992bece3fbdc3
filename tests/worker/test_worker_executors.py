"""The thread and Dask executors, driven by a Worker against the scripted WorkerService.

The Dask tests use real ``distributed.LocalCluster``s: one of two worker
processes (so a task may kill its Dask worker), and one with a custom resource
``GPU=1``. The scheduler fails a task at the first death of its worker
(``allowed-failures`` 0), so a death reaches the attempt at once.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time

import pytest
from fake_worker_service import FakeCoordinator, make_lease, start_server
from fleetflow.api.v1 import worker_service_pb2 as pb
from fleetflow.serde import loads
from fleetflow_worker import Worker, WorkerSettings
from fleetflow_worker._dask import cluster_capacity
from fleetflow_worker.errors import DaskWorkerLost, TaskTimeout

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


@pytest.fixture
async def coordinator():
    fake = FakeCoordinator()
    server, port = await start_server(fake)
    fake.port = port
    yield fake
    await server.stop(0)


@pytest.fixture
async def make_worker(coordinator, sample_tasks, sample_tasks_path):
    running: list[tuple[Worker, asyncio.Task]] = []

    def make(**overrides) -> Worker:
        options = dict(
            coordinator=f"127.0.0.1:{coordinator.port}",
            worker_id="w-exec",
            cpu=2,
            memory=1e9,
            lease_wait_s=0.2,
            drain_grace_s=2,
            flush_timeout_s=2,
            backoff_cap_s=0.2,
        )
        options.update(overrides)
        worker = Worker(WorkerSettings(**options), sample_tasks, [sample_tasks_path])
        worker.run_task = asyncio.create_task(worker.run())
        running.append((worker, worker.run_task))
        return worker

    yield make
    for worker, task in running:
        worker.stop(force=True)
        await asyncio.wait_for(task, 30)
        worker.table.validate()


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster:
            yield cluster


def value_of(outcome: pb.Outcome):
    assert outcome.WhichOneof("result") == "value", outcome
    return loads(outcome.value)


def error_of(outcome: pb.Outcome) -> BaseException:
    assert outcome.WhichOneof("result") == "error", outcome
    return loads(outcome.error.pickled)


# ------------------------------------------------------------------ thread


async def test_the_thread_executor_runs_sync_tasks_in_the_workers_process(coordinator, make_worker):
    make_worker(executor="thread")
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:where"))
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:double", x=21))
    coordinator.leases.put_nowait(make_lease(3, "sample_tasks:boom", x=1))
    outcomes = await coordinator.wait_outcomes(3)
    pid, thread = value_of(outcomes[1, 1])
    assert pid == os.getpid() and thread.startswith("fleetflow-task")
    assert value_of(outcomes[2, 1]) == 42
    assert isinstance(error_of(outcomes[3, 1]), ValueError)


async def test_the_thread_executor_times_out_and_abandons_the_thread(coordinator, make_worker):
    worker = make_worker(executor="thread")
    started = time.monotonic()
    coordinator.leases.put_nowait(
        make_lease(1, "sample_tasks:sleep_sync", seconds=3, timeout_s=0.3)
    )
    outcomes = await coordinator.wait_outcomes(1)
    assert time.monotonic() - started < 2.5  # did not wait for the thread
    assert outcomes[1, 1].timed_out and isinstance(error_of(outcomes[1, 1]), TaskTimeout)
    assert worker.table.running == 0  # its slot is free again


# -------------------------------------------------------------------- dask


def test_cluster_capacity_sums_threads_memory_and_resources():
    identity = {
        "workers": {
            "tcp://a": {"nthreads": 2, "memory_limit": 100, "resources": {"GPU": 1}},
            "tcp://b": {"nthreads": 4, "memory_limit": 0, "resources": {"GPU": 2, "cpu": 9}},
        }
    }
    assert cluster_capacity(identity) == {"cpu": 6.0, "memory": 100.0, "GPU": 3.0}
    assert cluster_capacity({"workers": {}}) == {"cpu": 0.0, "memory": 0.0}


def test_the_dask_executor_needs_a_scheduler_address():
    with pytest.raises(ValueError, match="--dask-scheduler"):
        WorkerSettings(executor="dask", coordinator="127.0.0.1:1")


async def test_the_dask_executor_runs_attempts_on_the_cluster_and_offers_its_capacity(
    coordinator, make_worker, cluster
):
    worker = make_worker(executor="dask", dask_address=cluster.scheduler_address)
    for i in range(6):
        coordinator.leases.put_nowait(make_lease(i, "sample_tasks:where"))
    coordinator.leases.put_nowait(make_lease(10, "sample_tasks:double", x=21))
    coordinator.leases.put_nowait(make_lease(11, "sample_tasks:boom", x=1))
    outcomes = await coordinator.wait_outcomes(8, timeout_s=30)
    dask_pids = set((await worker.pool.client.run(os.getpid)).values())
    pids = {value_of(outcomes[i, 1])[0] for i in range(6)}
    assert pids <= dask_pids and os.getpid() not in pids
    assert value_of(outcomes[10, 1]) == 42
    assert isinstance(error_of(outcomes[11, 1]), ValueError)  # the task's own error
    assert not outcomes[11, 1].infrastructure
    capacity = dict(coordinator.registrations[-1].capacity.amounts)
    assert capacity["cpu"] == 2.0 and capacity["memory"] > 0  # the cluster's, not --cpu


async def test_a_dask_batch_is_one_future(coordinator, make_worker, cluster):
    worker = make_worker(executor="dask", dask_address=cluster.scheduler_address)
    await coordinator.wait_for(lambda: coordinator.registrations)
    await asyncio.sleep(0.3)  # started and connected
    submitted = []
    submit = worker.pool.client.submit
    worker.pool.client.submit = lambda *a, **kw: submitted.append(len(a[2])) or submit(*a, **kw)
    for i in range(20):
        lease = make_lease(100 + i, "sample_tasks:double", x=i)
        lease.batch = 7
        coordinator.leases.put_nowait(lease)
    outcomes = await coordinator.wait_outcomes(20, timeout_s=30)
    assert [value_of(outcomes[100 + i, 1]) for i in range(20)] == [2 * i for i in range(20)]
    assert len(submitted) < 20 and sum(submitted) == 20  # batches, not a future per task


async def test_a_dask_timeout_cancels_the_future(coordinator, make_worker, cluster):
    make_worker(executor="dask", dask_address=cluster.scheduler_address)
    started = time.monotonic()
    coordinator.leases.put_nowait(
        make_lease(1, "sample_tasks:sleep_sync", seconds=4, timeout_s=0.5)
    )
    outcomes = await coordinator.wait_outcomes(1, timeout_s=30)
    assert time.monotonic() - started < 3.5
    assert outcomes[1, 1].timed_out and isinstance(error_of(outcomes[1, 1]), TaskTimeout)


async def test_a_cancelled_dask_attempt_reports_nothing_and_frees_its_slot(
    coordinator, make_worker, cluster
):
    worker = make_worker(executor="dask", dask_address=cluster.scheduler_address)
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:sleep_sync", seconds=3))
    await coordinator.wait_for(lambda: any(h.running for h in coordinator.heartbeats), timeout_s=20)
    coordinator.cancel.append(pb.HeldTaskRun(task_run_id=1, attempt=1))
    async with asyncio.timeout(10):
        while worker.table.running:
            await asyncio.sleep(0.05)
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:double", x=1))
    outcomes = await coordinator.wait_outcomes(1, timeout_s=20)
    assert set(outcomes) == {(2, 1)}  # nothing for the cancelled attempt


async def test_a_dask_workers_death_is_an_infrastructure_failure(coordinator, make_worker, cluster):
    worker = make_worker(executor="dask", dask_address=cluster.scheduler_address)
    coordinator.leases.put_nowait(make_lease(1, "sample_tasks:die", code=3))
    outcomes = await coordinator.wait_outcomes(1, timeout_s=60)
    assert outcomes[1, 1].infrastructure
    assert isinstance(error_of(outcomes[1, 1]), DaskWorkerLost)
    # The nanny restarts the Dask worker; the executor goes on.
    coordinator.leases.put_nowait(make_lease(2, "sample_tasks:double", x=4))
    assert value_of((await coordinator.wait_outcomes(2, timeout_s=60))[2, 1]) == 8
    assert not worker.run_task.done()


async def test_gpu_capacity_comes_from_dask_resources_and_follows_workers(coordinator, make_worker):
    # A cluster whose worker has a custom resource GPU=1; then a second worker
    # joins (capacity grows in a heartbeat) and leaves (it shrinks again).
    async with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        resources={"GPU": 1},
        dashboard_address=":0",
        asynchronous=True,
    ) as gpu_cluster:
        worker = make_worker(executor="dask", dask_address=gpu_cluster.scheduler_address)
        await coordinator.wait_for(lambda: coordinator.registrations, timeout_s=20)
        registered = dict(coordinator.registrations[-1].capacity.amounts)
        assert registered["GPU"] == 1.0 and registered["cpu"] == 1.0
        lease = make_lease(1, "sample_tasks:dask_resources_free")
        lease.resources.amounts["GPU"] = 1.0
        coordinator.leases.put_nowait(lease)
        outcomes = await coordinator.wait_outcomes(1, timeout_s=30)
        assert value_of(outcomes[1, 1]) == {"GPU": 0.0}  # Dask gave the attempt the GPU

        def told(cpu):
            return any(
                h.HasField("capacity") and h.capacity.amounts["cpu"] == cpu
                for h in coordinator.heartbeats
            )

        async with distributed.Worker(
            gpu_cluster.scheduler_address, nthreads=2, resources={"GPU": 1}
        ):
            await coordinator.wait_for(lambda: told(3.0), timeout_s=20)
            assert worker.capacity["GPU"] == 2.0
        await coordinator.wait_for(lambda: told(1.0), timeout_s=20)
        assert worker.capacity["GPU"] == 1.0


def test_errors_pickle_without_tblib_after_distributed_is_imported():
    # distributed installs tblib's reducer for every exception class; a pickle
    # made through it needs tblib to load and cannot load MemoryLimitExceeded.
    import copyreg

    from fleetflow.serde import error_from_exception
    from fleetflow_worker.errors import MemoryLimitExceeded

    assert "tblib" in copyreg.dispatch_table[MemoryLimitExceeded].__module__
    assert (
        pickle.loads(pickle.dumps(MemoryLimitExceeded("sample_tasks:hog", 1, 3, 2))).limit_bytes
        == 2
    )
    error = error_from_exception(MemoryLimitExceeded("sample_tasks:hog", 100, 300, 150))
    assert b"tblib" not in error.pickled
    again = loads(error.pickled)
    assert isinstance(again, MemoryLimitExceeded) and again.peak_bytes == 300


async def test_a_dask_workers_death_fails_the_attempt_whatever_the_clusters_allowed_failures(
    coordinator, make_worker, tmp_path
):
    # Dask (allowed-failures 3 by default) would rerun the task on the other
    # worker, where it survives; the executor sees its worker leave and fails it.
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):  # Dask's default
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            asynchronous=True,
        )
        await cluster
    async with cluster:
        make_worker(executor="dask", dask_address=cluster.scheduler_address)
        marker = str(tmp_path / "died")
        coordinator.leases.put_nowait(
            make_lease(1, "sample_tasks:die_once", marker=marker, seconds=1.0)
        )
        outcomes = await coordinator.wait_outcomes(1, timeout_s=60)
        assert outcomes[1, 1].infrastructure, outcomes[1, 1]
        assert isinstance(error_of(outcomes[1, 1]), DaskWorkerLost)
        assert "left while it held the attempt" in str(error_of(outcomes[1, 1]))
