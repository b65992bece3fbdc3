"""Executors end to end: a real coordinator and a real `fleetflow worker --executor ...`.

The Dask cases run a real ``distributed.LocalCluster`` (two worker processes)
in the test process; the fleetflow worker reaches it by its scheduler address,
from a flag or from the configuration file's ``[[executors]]`` entry.
"""

from __future__ import annotations

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import FLOWS

distributed = pytest.importorskip("distributed")

EXECUTOR_FLOWS = FLOWS.with_name("executor_flows.py")
flows = load_module(str(EXECUTOR_FLOWS))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster


def _spread(address: str, n: int) -> list[tuple[int, int, str]]:
    with Client(address) as client:
        rows = client.submit(flows.spread, n=n).result(timeout=90)
    assert [row[0] for row in rows] == list(range(n))
    return rows


def test_fleetflow_worker_executor_dask_runs_a_flow_on_the_cluster(fleet, cluster):
    fleet.start_coordinator()
    worker = fleet.start_worker(
        "--executor", "dask", "--dask-scheduler", cluster.scheduler_address,
        module=EXECUTOR_FLOWS,
    )  # fmt: skip
    rows = _spread(fleet.address, 200)
    with distributed.Client(cluster.scheduler_address) as dask_client:
        dask_pids = set(dask_client.run(lambda: __import__("os").getpid()).values())
    pids = {row[1] for row in rows}
    assert pids <= dask_pids and worker.pid not in pids
    assert "dask_executor_connected" in worker.log()


def test_the_configuration_files_executor_entry_is_used(fleet, cluster, tmp_path):
    config = tmp_path / "fleetflow.toml"
    config.write_text(
        "[worker]\n"
        'executor = "cluster"\n'
        "[[executors]]\n"
        'name = "threads"\n'
        'type = "thread"\n'
        "[[executors]]\n"
        'name = "cluster"\n'
        'type = "dask"\n'
        f'address = "{cluster.scheduler_address}"\n'
        "options = { timeout = 20 }\n"
    )
    fleet.start_coordinator()
    worker = fleet.start_worker(module=EXECUTOR_FLOWS, env={"FLEETFLOW_CONFIG": str(config)})
    rows = _spread(fleet.address, 20)
    assert worker.pid not in {row[1] for row in rows}
    assert "dask_executor_connected" in worker.log()


def test_fleetflow_worker_executor_thread(fleet):
    fleet.start_coordinator()
    worker = fleet.start_worker("--executor", "thread", module=EXECUTOR_FLOWS)
    rows = _spread(fleet.address, 50)
    assert {row[1] for row in rows} == {worker.pid}
    assert all(row[2].startswith("fleetflow-task") for row in rows)


def test_the_readmes_dask_worker_command_runs_as_written(fleet, cluster, tmp_path):
    import shlex
    import sys

    from .fleet import ROOT, Proc

    readme = (ROOT / "README.md").read_text()
    (line,) = [
        ln for ln in readme.splitlines() if ln.startswith("fleetflow worker") and "dask" in ln
    ]
    words = shlex.split(line)[2:]  # after "fleetflow worker"
    given = {"--coordinator": None, "--module": None, "--dask-scheduler": None}
    fleet.start_coordinator()
    ours = {
        "--coordinator": fleet.address,
        "--module": str(EXECUTOR_FLOWS),
        "--dask-scheduler": cluster.scheduler_address,
    }
    for i, word in enumerate(words[:-1]):
        if word in given:
            words[i + 1] = ours[word]
            given[word] = word
    assert all(given.values()), given  # the README names each
    worker = Proc(
        [sys.executable, "-m", "fleetflow_worker", *words], tmp_path / "readme-worker.log"
    )
    fleet.procs.append(worker)
    rows = _spread(fleet.address, 10)
    assert worker.pid not in {row[1] for row in rows}
