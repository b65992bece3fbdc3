"""A fleetflow fleet for the benchmark (coordinator + real workers) and its workloads.

Started the way ``tests/e2e/fleet.py`` does: ``python -m fleetflow_coordinator
--listen 127.0.0.1:0 --port-file F`` and ``python -m fleetflow_worker
--coordinator ADDR --module benchmarks/ff_tasks.py --cpu 1``, each in its own
process group, logs under ``benchmarks/out/``. The coordinator keeps its
defaults (lease TTL 10 s, heartbeat 1 s, SQLite storage, dashboard on), as a
user would run it, except that each start gets a fresh database file under
``benchmarks/out/`` and the dashboard a free port.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import ff_tasks
import psutil
from common import BENCH, Proc, cpu_s, peak_rss_mib, percentile, python, rss_mib, wait_until
from fleetflow import Client

MODULE = BENCH / "ff_tasks.py"


class Fleet:
    """Coordinator plus ``workers`` worker processes; ``stop()`` ends them all."""

    def __init__(self, logdir: Path, tag: str) -> None:
        self.logdir = logdir
        self.tag = tag
        self.coordinator: Proc | None = None
        self.workers: list[Proc] = []
        self.address = ""
        self.client: Client | None = None

    def start(
        self,
        workers: int = 2,
        cpu: float = 1,
        warm_up: bool = True,
        coordinator_args=(),
        worker_args=(),
        credentials=None,
    ) -> dict:
        """Start everything; return timings (startup = launch until a 2-task map ran).

        ``worker_args`` go to every worker, ``credentials`` (a
        ``fleetflow.Credentials``) to the client: TLS and tokens.
        """
        t0 = time.perf_counter()
        port_file = self.logdir / f"{self.tag}.port"
        port_file.unlink(missing_ok=True)
        # A fresh SQLite file per start (the coordinator's default is durable
        # storage in a file; its default path would carry runs over).
        db = self.logdir / f"{self.tag}.db"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        self.coordinator = Proc(
            [
                python(),
                "-m",
                "fleetflow_coordinator",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--db",
                str(db),
                # Dashboard and /metrics stay on, on a free port.
                "--http",
                "127.0.0.1:0",
                *coordinator_args,
            ],
            self.logdir / f"{self.tag}-coordinator.log",
        )
        wait_until(
            lambda: port_file.exists() or not self.coordinator.alive(),
            30,
            what="coordinator port file",
        )
        if not self.coordinator.alive():
            raise RuntimeError(f"coordinator exited:\n{self.coordinator.log_text()[-3000:]}")
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"
        t_coord = time.perf_counter() - t0
        self.cpu = cpu
        self.worker_args = list(worker_args)
        self.add_workers(workers)
        self.client = Client(self.address, credentials=credentials)
        timings = {"coordinator_ready_s": t_coord}
        if workers:
            self.wait_for_workers()
            timings["workers_registered_s"] = time.perf_counter() - t0
            if warm_up:
                assert self.client.submit(ff_tasks.w1_map, n=2).result(timeout=60) == [1, 2]
        timings["startup_s"] = time.perf_counter() - t0
        return timings

    def add_workers(self, workers: int) -> None:
        """Start ``workers`` more worker processes (``--cpu`` as given to :meth:`start`)."""
        first = len(self.workers)
        for i in range(first, first + workers):
            self.workers.append(
                Proc(
                    [
                        python(),
                        "-m",
                        "fleetflow_worker",
                        "--coordinator",
                        self.address,
                        "--module",
                        str(MODULE),
                        "--cpu",
                        str(self.cpu),
                        *getattr(self, "worker_args", ()),
                    ],
                    self.logdir / f"{self.tag}-worker{i}.log",
                )
            )

    def wait_for_workers(self) -> None:
        """Wait until every worker started registered (raises if one exited)."""
        if self.workers:
            wait_until(
                lambda: (
                    all("worker_registered" in w.log_text() for w in self.workers)
                    or not all(w.alive() for w in self.workers)
                ),
                60,
                what="workers registered",
            )
            if not all(w.alive() for w in self.workers):
                raise RuntimeError("a worker exited:\n" + self.workers[0].log_text()[-3000:])

    def worker_pids(self) -> list[int]:
        """Worker processes and their pool children."""
        pids = []
        for w in self.workers:
            try:
                proc = psutil.Process(w.pid)
                pids.append(proc.pid)
                pids.extend(c.pid for c in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return pids

    def workers_cpu_s(self) -> float:
        total = 0.0
        for pid in self.worker_pids():
            try:
                total += cpu_s(pid)
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        for w in reversed(self.workers):
            w.stop(grace_s=10)
        if self.coordinator is not None:
            self.coordinator.stop(grace_s=10)
            db = self.logdir / f"{self.tag}.db"
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(db) + suffix).unlink(missing_ok=True)


class DidNotFinish(Exception):
    """A bounded call ran out of time."""


def bounded(fn, timeout_s: float, on_timeout=None):
    """Run ``fn()`` in a thread; raise DidNotFinish after ``timeout_s``.

    ``on_timeout`` (e.g. stopping the fleet) is called first, so a call
    blocked on the coordinator fails instead of lingering.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        if on_timeout is not None:
            on_timeout()
        thread.join(10)
        raise DidNotFinish(f"did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


# -------------------------------------------------------------------- workloads


def run_rep(fleet: Fleet, workload: str, n: int, iters: int = 0, timeout_s: float = 600) -> dict:
    """One repetition of W1-W4 on a started fleet; CPU time of each side included."""
    client = fleet.client
    assert client is not None and fleet.coordinator is not None
    coord_cpu0 = cpu_s(fleet.coordinator.pid)
    workers_cpu0 = fleet.workers_cpu_s()
    rep: dict = {"t_start": time.monotonic()}
    t0 = time.perf_counter()
    if workload == "W1":
        result = client.submit(ff_tasks.w1_map, n=n).result(timeout=timeout_s)
        assert result == list(range(1, n + 1)), "W1 results differ"
    elif workload == "W2":
        result = client.submit(ff_tasks.w2_sleep, n=n, seconds=0.010).result(timeout=timeout_s)
        assert result == list(range(n)), "W2 results differ"
    elif workload == "W4":
        result = client.submit(ff_tasks.w4_cpu, n=n, iters=iters).result(timeout=timeout_s)
        assert len(result) == n
    elif workload == "W3":
        latencies = []
        deadline = time.monotonic() + timeout_s
        for i in range(n):
            t = time.perf_counter()
            left = max(1.0, deadline - time.monotonic())
            # client.run: submit and wait in one call, what a caller wanting
            # the result synchronously uses (issue 18)
            assert client.run(ff_tasks.w3_one, x=i, timeout=left) == i + 1
            latencies.append((time.perf_counter() - t) * 1000)
        rep.update(p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99))
    else:
        raise ValueError(workload)
    rep["wall_s"] = time.perf_counter() - t0
    rep["t_end"] = time.monotonic()
    rep["coordinator_cpu_s"] = cpu_s(fleet.coordinator.pid) - coord_cpu0
    rep["workers_cpu_s"] = fleet.workers_cpu_s() - workers_cpu0
    rep["coordinator_rss_mib"] = rss_mib(fleet.coordinator.pid)
    return rep


def pending_memory(fleet: Fleet, n: int, timeout_s: float, complete: bool = False) -> dict:
    """W5: submit an ``n``-item map with no worker connected; RSS once all are pending.

    With ``complete``, 2 workers then run the map to the end; the coordinator's
    peak RSS (VmHWM) over submission, pending and the whole run is recorded.
    """
    client = fleet.client
    assert client is not None and fleet.coordinator is not None
    pid = fleet.coordinator.pid
    out: dict = {"process": "coordinator (no workers connected)", "rss_idle_mib": rss_mib(pid)}
    t0 = time.perf_counter()
    spec = ff_tasks.w5_pending.build(n=n)
    out["client_build_s"] = time.perf_counter() - t0
    out["spec_bytes"] = spec.ByteSize()
    handle = client.submit(spec)
    out["accepted_s"] = time.perf_counter() - t0

    def all_pending():
        info = client.get(handle.id)
        return info if sum(c.scheduled + c.pending for c in info.nodes) >= n else None

    info = wait_until(all_pending, max(1.0, timeout_s - out["accepted_s"]), 0.2, "pending")
    out["pending"] = sum(c.scheduled + c.pending for c in info.nodes)
    out["all_pending_s"] = time.perf_counter() - t0
    time.sleep(1.0)
    out["rss_mib"] = rss_mib(pid)
    out["peak_rss_mib"] = peak_rss_mib(pid)
    out["cpu_s"] = cpu_s(pid)
    if complete:
        # Then let 2 workers run the whole map and check every result; the
        # coordinator's peak RSS is its VmHWM (the kernel's high-water mark).
        left = max(1.0, timeout_s - (time.perf_counter() - t0))
        t1 = time.perf_counter()
        fleet.add_workers(2)
        state = bounded(lambda: handle.wait(timeout=left), left + 5)
        out["run_s"] = time.perf_counter() - t1
        out["run_state"] = state
        out["run_peak_rss_mib"] = peak_rss_mib(pid)
        result = handle.result(timeout=60)
        assert result == list(range(n)), "W5 results differ"
        out["run_checked"] = len(result)
        out["run_end_rss_mib"] = rss_mib(pid)
        out["run_peak_rss_mib"] = peak_rss_mib(pid)
    return out
