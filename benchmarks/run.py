"""fleetflow against Dask distributed and Prefect 3 on the same workloads, in one run.

    .venv/bin/python benchmarks/run.py [--quick] [--reps 3] [--only W1,W3]
                                       [--systems fleetflow,dask,prefect,prefect-threads,ray]

Writes ``benchmarks/RESULTS.md`` (and the raw numbers to
``benchmarks/out/results.json``; process logs go to ``benchmarks/out/``).

* fleetflow runs here: a coordinator and two ``--cpu 1`` worker processes on
  127.0.0.1, this process is the client.
* Peers run in ``benchmarks/peers.py`` subprocesses inside a network namespace
  that has only loopback (``unshare -n``), telemetry off, each bounded by a
  watchdog and a hard timeout: a peer that is too slow or hangs is reported as
  "did not finish within N s", never waited for.

Each (system, workload) gets one system start (its startup time is reported
apart); the repetitions then run back to back on it. A (system, workload)
whose first repetition takes longer than ``--long-s`` seconds runs once, and
the table says so. W5 starts a fresh system for each repetition.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import psutil
import workloads
from common import BENCH, OUT, ROOT, Proc, child_env, cpu_s, python, stop_all, wait_until
from ff_fleet import DidNotFinish, Fleet, bounded, pending_memory, run_rep

SYSTEMS = ["fleetflow", "dask", "prefect", "prefect-threads", "ray"]

#: Ray runs from its own virtual environment (its pins never touch fleetflow's):
#: ``python3 -m venv .venv-ray && .venv-ray/bin/pip install ray==2.60.0 psutil``.
RAY_PYTHON = ROOT / ".venv-ray" / "bin" / "python"

#: (entry, workload, size key). Order = run order.
PLAN = [
    ("W1-1k", "W1", "W1_small"),
    ("W1-10k", "W1", "W1"),
    ("W1-100k", "W1", "W1_large"),
    ("W2", "W2", "W2"),
    ("W3", "W3", "W3"),
    ("W4", "W4", "W4"),
    ("W5-100k", "W5", "W5"),
    ("W5-1M", "W5", "W5_large"),
    ("W6", "W6", "W1"),
]

#: Which entries each system runs by default (full run, then --quick).
#: prefect (ProcessPoolTaskRunner) runs ~16 no-op tasks/s here, so its larger W1
#: sizes are bounded by timeouts, and W5 uses prefect-threads, whose submissions
#: are fast enough to fill a 100,000-item queue at all.
DEFAULT_ENTRIES = {
    "fleetflow": (
        {"W1-1k", "W1-10k", "W1-100k", "W2", "W3", "W4", "W5-100k", "W5-1M", "W6"},
        {"W1-1k", "W1-10k", "W1-100k", "W2", "W3", "W4", "W5-100k", "W5-1M", "W6"},
    ),
    "dask": (
        {"W1-1k", "W1-10k", "W1-100k", "W2", "W3", "W4", "W5-100k", "W5-1M"},
        {"W1-1k", "W1-10k", "W1-100k", "W2", "W3", "W4", "W5-100k", "W5-1M"},
    ),
    "prefect": (
        {"W1-1k", "W1-10k", "W1-100k", "W2", "W3", "W4"},
        {"W1-1k", "W3"},
    ),
    "prefect-threads": (
        {"W1-10k", "W1-100k", "W5-100k", "W5-1M"},
        {"W5-100k"},
    ),
    "ray": (
        {"W1-1k", "W1-10k", "W1-100k", "W2", "W3", "W4"},
        {"W1-1k", "W3"},
    ),
}

#: Timeout of one (system, entry) in the full run, seconds (all its reps and its start).
TIMEOUTS = {
    ("prefect", "W1-1k"): 330,
    ("prefect", "W1-10k"): 100,
    ("prefect", "W1-100k"): 100,
    ("prefect", "W2"): 240,
    ("prefect", "W3"): 300,
    ("prefect", "W4"): 200,
    ("prefect-threads", "W1-10k"): 150,
    ("prefect-threads", "W1-100k"): 120,
    ("prefect-threads", "W5-100k"): 120,
    ("prefect-threads", "W5-1M"): 100,
    ("fleetflow", "W1-100k"): 900,
    ("fleetflow", "W5-1M"): 300,
    ("dask", "W1-100k"): 600,
    ("dask", "W5-1M"): 300,
}
DEFAULT_TIMEOUT = 300
QUICK_TIMEOUT = 120

#: Entries with one fresh system per repetition (memory must not carry over).
FRESH_PER_REP = {"W5-100k", "W5-1M"}

UNSHARE_PREFIX = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


# ------------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict:
    vm = psutil.virtual_memory()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in (
        "fleetflow",
        "grpcio",
        "protobuf",
        "uvloop",
        "cloudpickle",
        "psutil",
        "dask",
        "distributed",
        "prefect",
        "py-spy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "client", "coordinator", "worker"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit += " (client/coordinator/worker modified)" if dirty else ""
    except OSError:
        commit = "?"
    commit += f"; sha256 of client/, coordinator/, worker/ *.py: {source_digest()}"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(vm.total / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "versions": versions,
        "commit": commit,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def source_digest() -> str:
    """Identifies the fleetflow code on disk now (it may change while a run goes on)."""
    digest = hashlib.sha256()
    for root in ("client", "coordinator", "worker"):
        for path in sorted((ROOT / root).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


def check_unshare() -> str | None:
    """None if peers can run in a loopback-only network namespace, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found"
    probe = subprocess.run(
        [*UNSHARE_PREFIX, "ip", "-o", "link"], capture_output=True, text=True, timeout=20
    )
    if probe.returncode != 0:
        return f"unshare -n failed: {probe.stderr.strip()[:200]}"
    links = [line.split(":")[1].strip() for line in probe.stdout.splitlines() if ":" in line]
    if links != ["lo"]:
        return f"namespace has links other than lo: {links}"
    return None


# ---------------------------------------------------------------------- fleetflow


def run_fleetflow(entry: str, workload: str, n: int, reps: int, args, iters: int) -> dict:
    timeout = args.timeout_for("fleetflow", entry)
    tag = f"ff-{entry}"
    if workload == "W5":
        return run_fleetflow_w5(entry, n, reps, timeout, args.long_s)
    if workload == "W6":
        return run_fleetflow_w6(entry, n, reps, args)
    fleet = Fleet(OUT, tag)
    result: dict = {"reps": []}
    deadline = time.monotonic() + timeout
    try:
        result.update(bounded(fleet.start, 90, fleet.stop))
        for i in range(reps):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DidNotFinish(f"did not finish within {timeout:g} s")
            rep = bounded(
                lambda left=left: run_rep(fleet, workload, n, iters, timeout_s=left),
                left + 5,
                fleet.stop,
            )
            result["reps"].append(rep)
            if i == 0 and rep["wall_s"] > args.long_s and reps > 1:
                result["note"] = (
                    f"1 repetition only: the first took {rep['wall_s']:.0f} s (> {args.long_s:g} s)"
                )
                break
        result["status"] = "ok"
    except DidNotFinish as exc:
        result.update(status="did_not_finish", timeout_s=timeout, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        fleet.stop()
    return result


def run_fleetflow_w5(entry: str, n: int, reps: int, timeout: float, long_s: float) -> dict:
    result: dict = {"reps": []}
    for i in range(reps):
        fleet = Fleet(OUT, f"ff-{entry}-{i}")
        t0 = time.perf_counter()
        try:
            timings = bounded(lambda f=fleet: f.start(workers=0), 60, fleet.stop)
            rep = bounded(
                lambda f=fleet: pending_memory(f, n, timeout, complete=True),
                timeout + 10,
                fleet.stop,
            )
            rep["startup_s"] = timings["startup_s"]
            result["reps"].append(rep)
            took = time.perf_counter() - t0
            if i == 0 and took > long_s and reps > 1:
                result["note"] = f"1 repetition only: the first took {took:.0f} s (> {long_s:g} s)"
                break
        except DidNotFinish as exc:
            result.update(status="did_not_finish", timeout_s=timeout, error=str(exc))
            return result
        except Exception as exc:  # noqa: BLE001 - recorded
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            return result
        finally:
            fleet.stop()
    result["status"] = "ok"
    return result


def run_fleetflow_w6(entry: str, n: int, reps: int, args) -> dict:
    """W1 with 200 simulated workers heartbeating next to the 2 real ones."""
    agents_total = args.size("W6_agents")
    per_proc = 50
    nprocs = max(1, -(-agents_total // per_proc))
    timeout = args.timeout_for("fleetflow", entry)
    fleet = Fleet(OUT, f"ff-{entry}")
    sims: list[tuple[Proc, Path, Path]] = []
    result: dict = {"reps": [], "agents": agents_total, "agent_processes": nprocs}
    try:
        result.update(bounded(fleet.start, 90, fleet.stop))
        coord = fleet.coordinator.pid
        # Coordinator CPU with only the 2 real workers, idle, 5 s.
        c0 = cpu_s(coord)
        time.sleep(5)
        result["coord_cpu_idle_2_workers_pct"] = (cpu_s(coord) - c0) / 5 * 100
        names = "ff_tasks:inc,ff_tasks:sleep_task,ff_tasks:cpu_burn,unoffered"
        remaining = agents_total
        for i in range(nprocs):
            count = min(per_proc, remaining)
            remaining -= count
            status = OUT / f"sim{i}.status.json"
            stats = OUT / f"sim{i}.stats.json"
            status.unlink(missing_ok=True)
            stats.unlink(missing_ok=True)
            proc = Proc(
                [
                    python(),
                    str(BENCH / "simfleet.py"),
                    "--coordinator",
                    fleet.address,
                    "--agents",
                    str(count),
                    "--prefix",
                    f"sim{i}",
                    "--task-names",
                    names,
                    "--status-file",
                    str(status),
                    "--out",
                    str(stats),
                    "--max-seconds",
                    str(timeout + 120),
                ],
                OUT / f"ff-{entry}-sim{i}.log",
            )
            sims.append((proc, status, stats))

        def registered() -> int:
            total = 0
            for _, status, _ in sims:
                try:
                    total += json.loads(status.read_text())["registered"]
                except (OSError, ValueError, KeyError):
                    pass
            return total

        t0 = time.perf_counter()
        wait_until(lambda: registered() >= agents_total, 60, 0.2, "simulated workers registered")
        result["agents_registered_s"] = time.perf_counter() - t0
        time.sleep(2)  # every agent past its first heartbeat
        c0 = cpu_s(coord)
        s0 = sum(cpu_s(p.pid) for p, _, _ in sims)
        time.sleep(5)
        result["coord_cpu_idle_with_agents_pct"] = (cpu_s(coord) - c0) / 5 * 100
        result["sim_cpu_idle_pct"] = (sum(cpu_s(p.pid) for p, _, _ in sims) - s0) / 5 * 100
        deadline = time.monotonic() + timeout
        for i in range(reps):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DidNotFinish(f"did not finish within {timeout:g} s")
            s0 = sum(cpu_s(p.pid) for p, _, _ in sims)
            rep = bounded(
                lambda left=left: run_rep(fleet, "W1", n, timeout_s=left), left + 5, fleet.stop
            )
            rep["sim_cpu_s"] = sum(cpu_s(p.pid) for p, _, _ in sims) - s0
            result["reps"].append(rep)
            if i == 0 and rep["wall_s"] > args.long_s and reps > 1:
                result["note"] = f"1 repetition only: the first took {rep['wall_s']:.0f} s"
                break
        result["status"] = "ok"
    except DidNotFinish as exc:
        result.update(status="did_not_finish", timeout_s=timeout, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        for proc, _, _ in sims:
            proc.stop(grace_s=20)
        fleet.stop()
    # Heartbeat statistics of the agents, per W1 repetition window.
    lat: list[tuple[float, float]] = []
    agg = {"heartbeats_ok": 0, "heartbeat_errors": 0, "register_errors": 0, "reregistrations": 0}
    for _, _, stats in sims:
        try:
            data = json.loads(stats.read_text())
        except (OSError, ValueError):
            result.setdefault("sim_errors", []).append(f"no stats from {stats.name}")
            continue
        for key in agg:
            agg[key] += data[key]
        lat.extend(tuple(x) for x in data["latencies"])
    result.update(agg)
    for rep in result["reps"]:
        window = [ms for t, ms in lat if rep["t_start"] <= t <= rep["t_end"]]
        if window:
            window.sort()
            rep["hb_count"] = len(window)
            rep["hb_p50_ms"] = window[len(window) // 2]
            rep["hb_p99_ms"] = window[min(len(window) - 1, int(len(window) * 0.99))]
            rep["hb_max_ms"] = window[-1]
    return result


# -------------------------------------------------------------------------- peers


def run_peer(system: str, entry: str, workload: str, n: int, reps: int, args, iters: int) -> dict:
    timeout = args.timeout_for(system, entry)
    if entry in FRESH_PER_REP:
        result: dict = {"reps": []}
        for i in range(reps):
            t0 = time.perf_counter()
            one = run_peer_process(system, entry, workload, n, 1, timeout, args, iters, tag=str(i))
            took = time.perf_counter() - t0
            if one.get("status") != "ok":
                one["reps"] = result["reps"] + one.get("reps", [])
                return one
            rep = {k: v for k, v in one.items() if k not in ("reps", "status")}
            result["reps"].append(rep)
            if i == 0 and took > args.long_s and reps > 1:
                result["note"] = (
                    f"1 repetition only: the first took {took:.0f} s (> {args.long_s:g} s)"
                )
                break
        result["status"] = "ok"
        return result
    return run_peer_process(system, entry, workload, n, reps, timeout, args, iters)


def run_peer_process(system, entry, workload, n, reps, timeout, args, iters, tag="") -> dict:
    name = f"{system}-{entry}{'-' + tag if tag else ''}"
    out = OUT / f"{name}.json"
    out.unlink(missing_ok=True)
    extra = {}
    if system.startswith("prefect"):
        home = OUT / "prefect-home" / name
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        extra["PREFECT_HOME"] = str(home)
    if system == "ray":
        if not RAY_PYTHON.exists():
            return {
                "status": "failed",
                "error": f"{RAY_PYTHON} not found: python3 -m venv .venv-ray && "
                ".venv-ray/bin/pip install ray==2.60.0 psutil",
            }
        extra["RAY_USAGE_STATS_ENABLED"] = "0"
    env = child_env(extra)
    for var in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        env.pop(var, None)
    cmd = [
        *UNSHARE_PREFIX,
        str(RAY_PYTHON) if system == "ray" else python(),
        str(BENCH / "peers.py"),
        "--system",
        system,
        "--workload",
        workload,
        "--n",
        str(n),
        "--iters",
        str(iters),
        "--reps",
        str(reps),
        "--long-s",
        str(args.long_s),
        "--timeout",
        str(timeout),
        "--out",
        str(out),
    ]
    proc = Proc(cmd, OUT / f"{name}.log", env=env)
    rc = proc.wait(timeout + 60)
    if rc is None:
        log(f"  {name}: no answer {timeout + 60:g} s after its start; killing it")
    proc.stop(grace_s=2)
    if out.exists():
        result = json.loads(out.read_text())
    else:
        result = {"status": "failed", "error": f"no result (exit code {rc}); see {proc.log_path}"}
        if rc is None:
            result.update(status="did_not_finish", timeout_s=timeout)
    if result.get("status") == "did_not_finish":
        result.setdefault("timeout_s", timeout)
    if "PREFECT_HOME" in extra:  # its database can take hundreds of MB
        shutil.rmtree(extra["PREFECT_HOME"], ignore_errors=True)
    return result


# ---------------------------------------------------------------------------- main


class Args:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.quick = ns.quick
        self.reps = ns.reps if ns.reps is not None else (1 if ns.quick else 3)
        self.only = {w.strip() for w in ns.only.split(",") if w.strip()} if ns.only else None
        self.systems = [s.strip() for s in ns.systems.split(",") if s.strip()]
        self.long_s = ns.long_s
        self.output = Path(ns.output)
        self.merge = ns.merge
        self.command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])

    def size(self, key: str) -> int:
        full, quick = workloads.SIZES[key]
        return quick if self.quick else full

    def timeout_for(self, system: str, entry: str) -> float:
        if self.quick:
            return QUICK_TIMEOUT
        return TIMEOUTS.get((system, entry), DEFAULT_TIMEOUT)

    def wants(self, entry: str, workload: str) -> bool:
        return self.only is None or entry in self.only or workload in self.only


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions [3; --quick: 1]")
    parser.add_argument("--only", default="", help="workloads or entries, e.g. W1,W3 or W1-10k")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=",".join(SYSTEMS))
    parser.add_argument(
        "--long-s",
        type=float,
        default=60.0,
        help="a first repetition longer than this is not repeated [60]",
    )
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="update out/results.json of the last run instead of starting anew",
    )
    args = Args(parser.parse_args())
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    OUT.mkdir(exist_ok=True)
    previous = None
    if args.merge and (OUT / "results.json").exists():
        previous = json.loads((OUT / "results.json").read_text())
    for old in [] if args.merge else OUT.iterdir():  # the previous run's files (not profile/)
        if old.name == "profile":
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    t_run = time.perf_counter()
    info = machine()
    log(f"machine: {info['nproc']} CPUs, {info['memory_gib']} GiB, Python {info['python']}")
    peers = [s for s in args.systems if s != "fleetflow"]
    netns_problem = check_unshare() if peers else None
    if netns_problem:
        log(f"peers will not run: {netns_problem}")

    iters = 0
    results: dict = {
        "machine": info,
        "command": args.command,
        "quick": args.quick,
        "reps": args.reps,
        "entries": {},
        "netns_problem": netns_problem,
    }
    if previous is not None:
        # --merge: keep every (entry, system) of the last run that this run does not redo.
        results = previous
        results.setdefault("merged_commands", []).append(
            {"command": args.command, "date_utc": info["date_utc"], "commit": info["commit"]}
        )
        results["netns_problem"] = results.get("netns_problem") or netns_problem
    for entry, workload, size_key in PLAN:
        if not args.wants(entry, workload):
            continue
        n = args.size(size_key)
        row = results["entries"].get(entry)
        if row is None or row["n"] != n:
            row = {"workload": workload, "n": n, "systems": {}}
            results["entries"][entry] = row
        else:
            # Entries keep the plan's order whatever order --merge runs added them in.
            pass
        if workload == "W4":
            # A --merge run keeps the first run's task size and serial baseline.
            iters = results.get("w4_iters") or workloads.calibrate_cpu_burn()
            results["w4_iters"] = iters
            if not row.get("serial_s"):
                serial = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    for i in range(n):
                        workloads.cpu_burn(i, iters)
                    serial.append(time.perf_counter() - t0)
                row["serial_s"] = serial
            serial = row["serial_s"]
            log(f"W4: {iters} iterations per task; serial {statistics.median(serial):.2f} s")
        for system in args.systems:
            if entry not in DEFAULT_ENTRIES[system][1 if args.quick else 0]:
                continue
            skip = _skip_reason(results, system, entry, workload)
            if skip:
                row["systems"][system] = {"status": "skipped", "error": skip}
                log(f"{entry} {system}: skipped ({skip})")
                continue
            if system != "fleetflow" and netns_problem:
                row["systems"][system] = {"status": "failed", "error": netns_problem}
                continue
            load = os.getloadavg()[0]
            log(
                f"{entry} {system}: n={n}, {args.reps} rep(s), "
                f"timeout {args.timeout_for(system, entry):g} s, load {load:.2f}"
            )
            t0 = time.perf_counter()
            code = f"{git_head()} / {source_digest()}"
            if system == "fleetflow":
                res = run_fleetflow(entry, workload, n, args.reps, args, iters)
            else:
                res = run_peer(system, entry, workload, n, args.reps, args, iters)
            res["elapsed_total_s"] = time.perf_counter() - t0
            if workload == "W4":  # speedup against the serial time measured for this row
                for rep in res.get("reps") or []:
                    rep["speedup"] = statistics.median(row["serial_s"]) / rep["wall_s"]
            if system == "fleetflow":  # the code the fleet's processes loaded
                res["code"] = code
            res["loadavg_before"] = load
            res["loadavg_after"] = os.getloadavg()[0]
            row["systems"][system] = res
            log(
                f"  -> {res.get('status')} in {res['elapsed_total_s']:.1f} s "
                f"{_brief(workload, res)}"
            )
            _save(results, args)
    order = [entry for entry, _, _ in PLAN]
    results["entries"] = dict(sorted(results["entries"].items(), key=lambda kv: order.index(kv[0])))
    if previous is None:
        results["total_s"] = time.perf_counter() - t_run
    else:
        results["merged_commands"][-1]["total_s"] = time.perf_counter() - t_run
    _save(results, args)
    log(f"done in {(time.perf_counter() - t_run) / 60:.1f} min; wrote {args.output}")
    return 0


def _skip_reason(results: dict, system: str, entry: str, workload: str) -> str | None:
    """Skip a larger size when a smaller one of the same workload did not finish."""
    order = [e for e, _, _ in PLAN]
    for other, row in results["entries"].items():
        if row["workload"] != workload or order.index(other) >= order.index(entry):
            continue
        res = row["systems"].get(system)
        if res and res.get("status") != "ok" and not res.get("reps"):
            return f"not run: {other} already {res.get('status').replace('_', ' ')}"
    return None


def _brief(workload: str, res: dict) -> str:
    reps = res.get("reps") or []
    if not reps:
        return res.get("error", "")
    if workload in ("W1", "W2", "W4", "W6"):
        return "walls " + ", ".join(f"{r['wall_s']:.2f}" for r in reps)
    if workload == "W3":
        return "p50/p99 " + ", ".join(f"{r['p50_ms']:.1f}/{r['p99_ms']:.1f}" for r in reps)
    if workload == "W5":
        key = "rss_mib" if "rss_mib" in reps[0] else "flow_process_rss_mib"
        return "rss " + ", ".join(f"{r.get(key, 0):.0f}" for r in reps)
    return ""


def _save(results: dict, args: Args) -> None:
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    from report import render, with_kept_sections

    previous = args.output.read_text() if args.output.exists() else ""
    args.output.write_text(with_kept_sections(render(results), previous))


if __name__ == "__main__":
    sys.exit(main())
