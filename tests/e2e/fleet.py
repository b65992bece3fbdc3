"""Start real coordinator and worker processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).resolve().parent / "flows.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / p) for p in ("client", "coordinator", "worker")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def fleetflow(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the ``fleetflow`` CLI (wide terminal, no ambient coordinator); check exit 0."""
    env = {**_env(), "COLUMNS": "200"}
    env.pop("FLEETFLOW_COORDINATOR", None)
    done = subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


class Proc:
    """A child process whose output goes to a log file; stopped by the fixture."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**_env(), **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.popen.returncode

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Fleet:
    """A coordinator plus workers; ``stop()`` ends them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.coordinator: Proc | None = None
        self.address = ""
        self.http_url = ""
        self.workers: list[Proc] = []

    def start_coordinator(
        self,
        *extra: str,
        lease_ttl: float = 3.0,
        heartbeat: float = 0.5,
        port: int = 0,
        db: str | None = None,
    ) -> str:
        """Start a coordinator; ``db`` defaults to a SQLite file in the test's tmp dir."""
        port_file = self.tmp / f"port-{len(self.procs)}"
        http_port_file = self.tmp / f"http-port-{len(self.procs)}"
        self.db = db or str(self.tmp / "fleetflow.db")
        proc = Proc(
            [
                sys.executable,
                "-m",
                "fleetflow_coordinator",
                "--listen",
                f"127.0.0.1:{port}",
                "--port-file",
                str(port_file),
                "--lease-ttl",
                str(lease_ttl),
                "--heartbeat-interval",
                str(heartbeat),
                "--db",
                self.db,
                "--http",
                "127.0.0.1:0",
                "--http-port-file",
                str(http_port_file),
                *extra,
            ],
            self.tmp / f"coordinator-{len(self.procs)}.log",
        )
        self.procs.append(proc)
        self.coordinator = proc
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not start:\n{proc.log()}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"
        # Written before the gRPC port file: the dashboard and /metrics.
        self.http_url = f"http://127.0.0.1:{http_port_file.read_text().strip()}"
        return self.address

    def start_worker(
        self,
        *extra: str,
        module: Path = FLOWS,
        cpu: float = 2,
        env: dict[str, str] | None = None,
    ) -> Proc:
        proc = Proc(
            [
                sys.executable,
                "-m",
                "fleetflow_worker",
                "--coordinator",
                self.address,
                "--module",
                str(module),
                "--cpu",
                str(cpu),
                *extra,
            ],
            self.tmp / f"worker-{len(self.procs)}.log",
            env,
        )
        self.procs.append(proc)
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"==== {p.log_path.name}\n{p.log()[-4000:]}" for p in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def late_results(proc: Proc, flow_run_id: str) -> list[dict]:
    """What a coordinator logged about late results on a finished flow run.

    Issue 11, item 6: such results change nothing and add no event after the
    run's terminal event; the coordinator logs each (``events_after_flow_run_end``).
    """
    found = []
    for line in proc.log().splitlines():
        if '"events_after_flow_run_end"' not in line:
            continue
        record = json.loads(line)
        if record.get("flow_run_id") == flow_run_id and record["kind"] == "LATE_RESULT_REJECTED":
            found.append(record)
    return found


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
