"""Helpers shared by the harness pieces: child processes, statistics, process metrics."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: Logs and raw results; FFBENCH_OUT moves them (e.g. for a --quick smoke test).
OUT = Path(os.environ.get("FFBENCH_OUT") or BENCH / "out")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every child: the repo's source roots and benchmarks/ importable."""
    env = dict(os.environ)
    paths = [str(ROOT / p) for p in ("client", "coordinator", "worker")] + [str(BENCH)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    # Telemetry off for every child, whichever system it runs.
    env["DO_NOT_TRACK"] = "1"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra or {})
    return env


#: Every Proc still running; run.py stops them on any exit.
LIVE: list[Proc] = []


class Proc:
    """A child in its own session (process group), output to a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or child_env(),
            cwd=ROOT,
            start_new_session=True,
        )
        LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL the whole process group."""
        if self.alive():
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.wait(grace_s)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.wait(5)
        if not self._log.closed:
            self._log.close()
        if self in LIVE:
            LIVE.remove(self)
        return self.popen.returncode

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def stop_all() -> None:
    for proc in reversed(list(LIVE)):
        proc.stop(grace_s=3.0)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process, MiB; None where /proc lacks it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def python() -> str:
    return sys.executable


#: Sections of RESULTS.md that a benchmark writes by itself sit between these markers;
#: report.py keeps them when run.py rewrites the file.
KEPT_END = "<!-- kept:end -->"


def put_kept_section(target: Path, section: str) -> None:
    """Replace (or append) one kept section of ``target``, leaving the rest of the file alone.

    ``section`` starts with its ``<!-- kept:begin NAME -->`` line and ends with
    :data:`KEPT_END`; the old section with the same first line is replaced.
    """
    section = section.strip("\n")
    begin = section.splitlines()[0]
    text = target.read_text() if target.exists() else ""
    if begin in text:
        start = text.index(begin)
        end = text.index(KEPT_END, start) + len(KEPT_END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    target.write_text(text)
