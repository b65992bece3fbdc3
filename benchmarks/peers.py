"""One workload on one peer system (Dask distributed or Prefect 3), in this process.

``run.py`` starts this file once per (system, workload, repetition), inside a
network namespace that has only loopback, and reads the JSON it writes::

    python benchmarks/peers.py --system dask --workload W1 --n 10000 --out r.json

Systems:

* ``dask``: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
  on 127.0.0.1, no dashboard; the scheduler runs in this process (as with any
  LocalCluster). W5 instead starts a scheduler process with no workers.
* ``prefect``: Prefect 3 with its temporary local server (started on first use,
  SQLite in a fresh PREFECT_HOME) and ``ProcessPoolTaskRunner(max_workers=2)``:
  what the Prefect docs offer for parallel CPU-bound work.
* ``prefect-threads``: the same with ``ThreadPoolTaskRunner(max_workers=2)``,
  Prefect's default kind of runner, for the no-op and sleep workloads.
* ``ray``: ``ray.init(num_cpus=2)``, a local Ray cluster on 127.0.0.1 with no
  dashboard, started by this process; tasks are ``@ray.remote`` functions with
  their default of one CPU each. Ray runs from its own virtual environment
  (``.venv-ray``, see ``run.py``), so its pins never touch fleetflow's.

A watchdog ends the process with a ``did_not_finish`` result once
``--timeout`` seconds have passed, so a slow or hung peer is reported, never
waited for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

T_PROCESS_START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import workloads  # noqa: E402
from common import peak_rss_mib as _peak_mib  # noqa: E402
from common import rss_mib as _rss_mib  # noqa: E402

_RESULT: dict = {}
_OUT: Path | None = None
_LOCK = threading.Lock()
_WRITTEN = False


def _write(result: dict) -> None:
    global _WRITTEN
    with _LOCK:
        if _WRITTEN:
            return
        _WRITTEN = True
        assert _OUT is not None
        tmp = _OUT.with_name(_OUT.name + ".tmp")
        clean = {k: v for k, v in result.items() if not k.startswith("_")}
        tmp.write_text(json.dumps(clean, indent=1))
        os.replace(tmp, _OUT)


def _watchdog(timeout_s: float) -> None:
    def fire() -> None:
        partial = dict(_RESULT)
        partial.update(status="did_not_finish", timeout_s=timeout_s)
        sampler = partial.pop("_sample", None)
        if callable(sampler):
            try:
                partial.update(sampler())
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                partial["sample_error"] = repr(exc)
        _write(partial)
        sys.stdout.flush()
        os._exit(3)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()

    return None


def _pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def _repeat(args: argparse.Namespace, one_rep) -> None:
    """Run ``one_rep`` up to ``args.reps`` times; one only if the first took > ``args.long_s``."""
    reps = _RESULT.setdefault("reps", [])
    for i in range(args.reps):
        reps.append(one_rep())
        _RESULT["elapsed_s"] = time.perf_counter() - T_PROCESS_START
        if i == 0 and reps[0]["wall_s"] > args.long_s and args.reps > 1:
            _RESULT["note"] = (
                f"1 repetition only: the first took {reps[0]['wall_s']:.0f} s (> {args.long_s:g} s)"
            )
            break


# ------------------------------------------------------------------------ dask


def run_dask(args: argparse.Namespace) -> dict:
    if args.workload == "W5":
        return run_dask_w5(args)
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.admin.system-monitor.gil.enabled": False})
    cluster = LocalCluster(
        n_workers=args.n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = Client(cluster)
    try:
        assert client.gather(client.map(workloads.inc, [0, 1], pure=False)) == [1, 2]
        _RESULT["startup_s"] = time.perf_counter() - T_PROCESS_START
        n = args.n

        def one_rep() -> dict:
            rep: dict = {}
            t0 = time.perf_counter()
            if args.workload == "W1":
                results = client.gather(client.map(workloads.inc, range(n), pure=False))
                assert results == list(range(1, n + 1)), "W1 results differ"
            elif args.workload == "W2":
                results = client.gather(client.map(workloads.sleep_task, range(n), pure=False))
                assert results == list(range(n)), "W2 results differ"
            elif args.workload == "W4":
                results = client.gather(
                    client.map(workloads.cpu_burn, range(n), iters=args.iters, pure=False)
                )
                assert len(results) == n
            elif args.workload == "W3":
                results = None
                latencies = []
                for i in range(n):
                    t = time.perf_counter()
                    assert client.submit(workloads.inc, i, pure=False).result() == i + 1
                    latencies.append((time.perf_counter() - t) * 1000)
                rep.update(p50_ms=_pctl(latencies, 50), p99_ms=_pctl(latencies, 99))
            else:
                raise ValueError(args.workload)
            rep["wall_s"] = time.perf_counter() - t0
            # pure=False above: fresh keys every repetition, so a repetition never
            # reuses results the scheduler still holds from the one before.
            del results
            return rep

        _repeat(args, one_rep)
        return _RESULT
    finally:
        client.close()
        cluster.close()


def _dask_scheduler_main(address_file: str) -> None:
    """A standalone scheduler process (W5), as ``dask scheduler`` would run it."""
    import asyncio

    from distributed import Scheduler

    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
            Path(address_file + ".tmp").write_text(scheduler.address)
            os.replace(address_file + ".tmp", address_file)
            await scheduler.finished()

    asyncio.run(main())


def run_dask_w5(args: argparse.Namespace) -> dict:
    import subprocess

    from distributed import Client

    address_file = str(_OUT) + ".scheduler-address"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", "dask-scheduler", "--address-file", address_file]
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(address_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.05)
        client = Client(Path(address_file).read_text().strip())
        _RESULT["startup_s"] = time.perf_counter() - T_PROCESS_START
        _RESULT["process"] = "dask scheduler process (no workers connected)"
        _RESULT["rss_idle_mib"] = _rss_mib(proc.pid)
        _RESULT["_sample"] = lambda: {
            "rss_mib_at_timeout": _rss_mib(proc.pid),
            "peak_rss_mib": _peak_mib(proc.pid),
        }
        n = args.n
        t0 = time.perf_counter()
        futures = client.map(workloads.inc, range(n))
        _RESULT["client_map_s"] = time.perf_counter() - t0
        count = 0
        while count < n and time.perf_counter() - t0 < args.timeout:
            count = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
            if count < n:
                time.sleep(0.2)
        _RESULT["all_pending_s"] = time.perf_counter() - t0
        _RESULT["tasks_on_scheduler"] = count
        time.sleep(1.0)  # let the allocator settle
        _RESULT["rss_mib"] = _rss_mib(proc.pid)
        _RESULT["peak_rss_mib"] = _peak_mib(proc.pid)
        _RESULT["client_rss_mib"] = _rss_mib(os.getpid())
        _RESULT["futures"] = len(futures)
        # No client.close(): releasing a million keys one by one takes minutes,
        # and the scheduler is killed right below anyway.
        return _RESULT
    finally:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------- ray


def run_ray(args: argparse.Namespace) -> dict:
    import ray

    ray.init(
        num_cpus=args.n_workers,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        inc = ray.remote(workloads.inc)
        sleep_task = ray.remote(workloads.sleep_task)
        cpu_burn = ray.remote(workloads.cpu_burn)
        assert ray.get([inc.remote(0), inc.remote(1)]) == [1, 2]
        _RESULT["startup_s"] = time.perf_counter() - T_PROCESS_START
        _RESULT["ray_version"] = ray.__version__
        n = args.n

        def one_rep() -> dict:
            rep: dict = {}
            t0 = time.perf_counter()
            if args.workload == "W1":
                results = ray.get([inc.remote(i) for i in range(n)])
                assert results == list(range(1, n + 1)), "W1 results differ"
            elif args.workload == "W2":
                results = ray.get([sleep_task.remote(i) for i in range(n)])
                assert results == list(range(n)), "W2 results differ"
            elif args.workload == "W4":
                results = ray.get([cpu_burn.remote(i, args.iters) for i in range(n)])
                assert len(results) == n
            elif args.workload == "W3":
                latencies = []
                for i in range(n):
                    t = time.perf_counter()
                    assert ray.get(inc.remote(i)) == i + 1
                    latencies.append((time.perf_counter() - t) * 1000)
                rep.update(p50_ms=_pctl(latencies, 50), p99_ms=_pctl(latencies, 99))
            else:
                raise ValueError(args.workload)
            rep["wall_s"] = time.perf_counter() - t0
            return rep

        _repeat(args, one_rep)
        return _RESULT
    finally:
        ray.shutdown()


# --------------------------------------------------------------------- prefect


def _start_prefect_server() -> int:
    """``prefect server start`` on a free loopback port; returns its pid once healthy.

    Used with ProcessPoolTaskRunner: with the temporary server, every pool
    process starts a temporary server of its own for each flow run (seen in
    the logs), so the pool's task runs would not even reach the flow's server.
    A local server that all processes share is what Prefect's docs advise.
    """
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(str(_OUT) + ".server.log", "ab")  # noqa: SIM115 - lives as long as we do
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--analytics-off",
            "--no-ui",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        raise RuntimeError("prefect server did not answer /api/health within 120 s")
    os.environ["PREFECT_API_URL"] = url
    return proc.pid


def run_prefect(args: argparse.Namespace) -> dict:
    if args.system == "prefect":
        _RESULT["server"] = "prefect server start (local, shared by the pool processes)"
        _RESULT["server_pid"] = _start_prefect_server()
    else:
        _RESULT["server"] = "temporary server (started by the first flow run)"

    from prefect import flow, task, unmapped
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if args.system == "prefect":
        runner = ProcessPoolTaskRunner(max_workers=2)
    else:
        runner = ThreadPoolTaskRunner(max_workers=2)

    inc = task(workloads.inc, name="inc")
    sleep_task = task(workloads.sleep_task, name="sleep_task")
    cpu_burn = task(workloads.cpu_burn, name="cpu_burn")
    blocked = task(workloads.blocked, name="blocked")

    @flow(task_runner=runner, name="warm_up")
    def warm_up() -> list:
        return inc.map([0, 1]).result()

    @flow(task_runner=runner, name="w1_map")
    def w1_map(n: int) -> list:
        return inc.map(range(n)).result()

    @flow(task_runner=runner, name="w2_sleep")
    def w2_sleep(n: int) -> list:
        return sleep_task.map(range(n)).result()

    @flow(task_runner=runner, name="w3_one")
    def w3_one(x: int) -> int:
        return inc(x)

    @flow(task_runner=runner, name="w4_cpu")
    def w4_cpu(n: int, iters: int) -> list:
        return cpu_burn.map(range(n), iters=unmapped(iters)).result()

    @flow(task_runner=runner, name="w5_pending")
    def w5_pending(n: int, release_file: str) -> dict:
        t0 = time.perf_counter()
        futures = blocked.map(range(n), release_file=unmapped(release_file))
        _RESULT["submit_s"] = time.perf_counter() - t0
        time.sleep(1.0)
        _RESULT.update(_prefect_rss())
        _RESULT["status"] = "ok"
        _write(_RESULT)
        # 100,000 blocked task runs would now have to drain: stop here instead.
        sys.stdout.flush()
        os._exit(0)
        return {"futures": len(futures)}

    assert warm_up() == [1, 2]
    _RESULT["startup_s"] = time.perf_counter() - T_PROCESS_START
    n = args.n
    if args.workload == "W5":
        _RESULT["process"] = (
            "flow-run process (holds the task runner's queue of pending task runs) "
            "and Prefect's temporary server"
        )
        _RESULT.update({k + "_idle": v for k, v in _prefect_rss().items()})
        _RESULT["_sample"] = _prefect_rss
        w5_pending(n, str(_OUT) + ".release")
        raise AssertionError("w5_pending returned")

    def one_rep() -> dict:
        rep: dict = {}
        t0 = time.perf_counter()
        if args.workload == "W1":
            assert w1_map(n) == list(range(1, n + 1)), "W1 results differ"
        elif args.workload == "W2":
            assert w2_sleep(n) == list(range(n)), "W2 results differ"
        elif args.workload == "W4":
            assert len(w4_cpu(n, args.iters)) == n
        elif args.workload == "W3":
            latencies = []
            for i in range(n):
                t = time.perf_counter()
                assert w3_one(i) == i + 1
                latencies.append((time.perf_counter() - t) * 1000)
            rep.update(p50_ms=_pctl(latencies, 50), p99_ms=_pctl(latencies, 99))
        else:
            raise ValueError(args.workload)
        rep["wall_s"] = time.perf_counter() - t0
        return rep

    _repeat(args, one_rep)
    return _RESULT


def _prefect_rss() -> dict:
    me = psutil.Process()
    server = [
        p
        for p in me.children(recursive=True)
        if any("server" in part or "uvicorn" in part for part in p.cmdline())
    ]
    out = {"flow_process_rss_mib": _rss_mib(me.pid), "flow_process_peak_rss_mib": _peak_mib(me.pid)}
    if server:
        out["server_rss_mib"] = sum(_rss_mib(p.pid) for p in server)
        out["server_peak_rss_mib"] = sum(_peak_mib(p.pid) or 0 for p in server)
    return out


def main() -> None:
    global _OUT
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="workload")
    parser.add_argument("--address-file")
    parser.add_argument("--system", choices=["dask", "prefect", "prefect-threads", "ray"])
    parser.add_argument("--workload", choices=["W1", "W2", "W3", "W4", "W5"])
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument(
        "--n-workers", type=int, default=2, help="Dask worker processes / Ray CPUs [2]"
    )
    parser.add_argument("--iters", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--long-s", type=float, default=90.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.role == "dask-scheduler":
        _dask_scheduler_main(args.address_file)
        return
    _OUT = Path(args.out)
    _RESULT.update(system=args.system, workload=args.workload, n=args.n, pid=os.getpid())
    _watchdog(args.timeout)
    try:
        if args.system == "dask":
            result = run_dask(args)
        elif args.system == "ray":
            result = run_ray(args)
        else:
            result = run_prefect(args)
        result.setdefault("status", "ok")
    except BaseException as exc:  # noqa: BLE001 - a peer's failure is a result
        import traceback

        traceback.print_exc()
        result = dict(_RESULT)
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
    result.pop("_sample", None)
    _write(result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown of peer machinery (pools, servers): the parent
    # kills the process group anyway.
    os._exit(0 if result["status"] == "ok" else 2)


if __name__ == "__main__":
    main()
