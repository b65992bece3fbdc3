"""The autoscaling signal (fleetflow_coordinator.autoscale) on the pure scheduler."""

from __future__ import annotations

from dataclasses import replace

from fleetflow_coordinator.autoscale import demand_json, pool_demand

from tests.core.harness import Fleet, items, node


def test_queued_then_running_cpus_per_pool():
    fleet = Fleet()
    flow = fleet.submit([node("t", items("x", [1, 2, 3]), map_=True, resources={"cpu": 2.0})])
    fleet.core.tick(fleet.now)
    # no worker yet: the queue alone asks to scale from zero
    demand = pool_demand(fleet.core)["default"]
    assert (demand.queued_task_runs, demand.queued_cpus, demand.running_cpus) == (3, 6.0, 0.0)
    assert demand.cpus == 6.0 and demand.workers == 0
    fleet.add_worker("w1", ["t"], cpu=4.0)
    grants = fleet.core.lease("w1", 10, fleet.now)
    assert len(grants) == 2  # two cpu=2 task runs fit on 4 CPUs
    demand = pool_demand(fleet.core)["default"]
    assert (demand.queued_cpus, demand.running_cpus, demand.running_slots) == (2.0, 4.0, 2)
    assert demand.cpus == 6.0  # busy workers still count: no scale-down mid-run
    assert (demand.workers, demand.capacity_cpus) == (1, 4.0)
    assert fleet.core.cancel_flow(flow.id, fleet.now)
    assert pool_demand(fleet.core)["default"].cpus == 0.0


def test_pools_are_separate_and_an_unknown_pool_is_zero():
    fleet = Fleet()
    spec = replace(node("g", items("x", [1, 2]), map_=True, resources={"cpu": 1.0}), pool="gpu")
    fleet.submit([spec])
    fleet.core.tick(fleet.now)
    assert set(pool_demand(fleet.core)) == {"gpu"}
    assert demand_json(fleet.core, "gpu")["cpus"] == 2.0
    assert demand_json(fleet.core, "default") == {
        "pool": "default",
        **{k: 0 for k in demand_json(fleet.core, "default") if k != "pool"},
    }
    assert demand_json(fleet.core)["pools"]["gpu"]["queued_task_runs"] == 2
