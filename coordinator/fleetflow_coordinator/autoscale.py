"""The autoscaling signal: how many CPUs each worker pool is asked for right now.

An autoscaler (the KEDA ScaledObject in ``deploy/kubernetes``) sizes a pool's
worker Deployment as ``ceil(demand / CPUs per worker)``. Demand is computed
when asked, from the state the coordinator already holds:

- **queued**: task runs ready to run (``SCHEDULED`` in flow runs that have not
  ended), from :meth:`Scheduler.demand` (the ``GetDemand`` RPC and ``fleetflow
  queue`` show the same groups), each weighing its ``cpu`` request;
- **running**: the CPU requests of the slots leased to workers that serve the
  pool (a batch of short task runs holds one slot, so it counts once).

Counting the running part keeps a busy pool from being scaled down while its
queue is momentarily empty (a queue-only signal would remove the workers that
are running the work). A worker serving several pools counts its slots under
the pool of each task run. Task runs that request no CPU (``cpu=0``) weigh
nothing; ``task_runs`` counts them for scalers that prefer task runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PoolDemand", "pool_demand", "demand_json"]


@dataclass
class PoolDemand:
    """The demand of one worker pool.

    Attributes:
        cpus: ``queued_cpus + running_cpus``: the signal to scale on, CPUs.
        queued_cpus: CPUs requested by ready task runs, CPUs.
        running_cpus: CPUs held by leased slots, CPUs.
        queued_task_runs: Ready task runs.
        running_slots: Leased slots (a batch is one slot).
        task_runs: ``queued_task_runs + running_slots``.
        workers: Connected workers that serve the pool.
        capacity_cpus: Their CPU capacity, CPUs.
    """

    cpus: float = 0.0
    queued_cpus: float = 0.0
    running_cpus: float = 0.0
    queued_task_runs: int = 0
    running_slots: int = 0
    task_runs: int = 0
    workers: int = 0
    capacity_cpus: float = 0.0


def pool_demand(core: Any) -> dict[str, PoolDemand]:
    """Compute every pool's demand from the scheduler's state (read only).

    Args:
        core: The coordinator's ``Scheduler``.

    Returns:
        ``{pool: PoolDemand}`` for every pool with work or workers.
    """
    out: dict[str, PoolDemand] = {}
    for pool, resources, waiting, _names, _reason in core.demand():
        entry = out.setdefault(pool, PoolDemand())
        entry.queued_task_runs += waiting
        entry.queued_cpus += waiting * float(resources.get("cpu", 0.0))
    for worker in core.workers.values():
        for pool in worker.pools:
            entry = out.setdefault(pool, PoolDemand())
            entry.workers += 1
            entry.capacity_cpus += float(worker.capacity.get("cpu", 0.0))
        slots: set[int] = set()
        for task_run in worker.running.values():
            key = id(task_run.batch) if task_run.batch is not None else task_run.id
            if key in slots:
                continue
            slots.add(key)
            entry = out.setdefault(task_run.node.pool, PoolDemand())
            entry.running_slots += 1
            entry.running_cpus += float(task_run.node.resources.get("cpu", 0.0))
    for entry in out.values():
        entry.cpus = entry.queued_cpus + entry.running_cpus
        entry.task_runs = entry.queued_task_runs + entry.running_slots
    return out


def demand_json(core: Any, pool: str | None = None) -> dict[str, Any]:
    """The ``/api/demand`` body: every pool, or one (zeros when it has none).

    Args:
        core: The coordinator's ``Scheduler``.
        pool: One pool's name, or None for all of them.

    Returns:
        ``{"pools": {pool: {...}}}``, or the one pool's fields with ``"pool"``.
    """
    pools = pool_demand(core)
    if pool is not None:
        return {"pool": pool, **asdict(pools.get(pool, PoolDemand()))}
    return {"pools": {name: asdict(d) for name, d in sorted(pools.items())}}
