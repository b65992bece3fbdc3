"""The embedded fleet of ``fleetflow run``: a coordinator and N workers as child processes.

:class:`Fleet` starts them on 127.0.0.1, checks they are alive while the run
is followed, and stops them (SIGTERM, then SIGKILL of their process groups).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import psutil

__all__ = ["Fleet", "FleetOptions", "FleetStartError", "sigterm_raises_interrupt"]

#: How long the embedded coordinator may take to start serving, seconds.
COORDINATOR_START_TIMEOUT_S = 30.0
#: How long stopped child processes get to exit after SIGTERM, seconds.
STOP_GRACE_S = 10.0
#: How long the embedded workers may take to register, seconds.
WORKERS_START_TIMEOUT_S = 60.0
#: The embedded coordinator's unschedulable timeout, seconds. Its fleet is
#: fixed and every worker has registered before the flow run is submitted, so a
#: task run none of them can run never will: it fails at once, with the reason.
EMBEDDED_UNSCHEDULABLE_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """What each embedded worker offers, and the coordinator's unschedulable timeout.

    Attributes:
        cpu: CPUs each worker offers; None shares the machine's out among them.
        memory: Memory each worker offers ("4Gi", bytes); None shares the machine's.
        resources: Custom capacity of each worker, ``("gpu=1", ...)``.
        pools: Worker pools each worker serves; empty: the default pool.
        unschedulable_timeout_s: Seconds before a task run no worker can run
            fails (0 waits forever).
    """

    cpu: float | None = None
    memory: str | None = None
    resources: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    unschedulable_timeout_s: float = EMBEDDED_UNSCHEDULABLE_TIMEOUT_S

    def worker_args(self, workers: int) -> list[str]:
        """The capacity and pool options of each of ``workers`` workers."""
        # By default the machine's CPUs and memory are shared out among the local
        # workers, so that N workers do not each offer (and start pool processes
        # for) every CPU.
        cpu = self.cpu if self.cpu is not None else max(1.0, (os.cpu_count() or 1) / workers)
        memory = self.memory or str(int(psutil.virtual_memory().total / workers))
        args = ["--cpu", f"{cpu:g}", "--memory", memory]
        for resource in self.resources:
            args += ["--resource", resource]
        for pool in self.pools:
            args += ["--pool", pool]
        return args


class FleetStartError(click.ClickException):
    """The embedded coordinator or its workers could not be started or died."""


class Fleet:
    """A coordinator and N workers run as child processes on 127.0.0.1.

    Their stdout and stderr go to one log file under ``log_dir``. Each child
    leads its own process group, so a Ctrl-C in the terminal reaches only
    this process, which then stops them with SIGTERM and, after
    :data:`STOP_GRACE_S`, SIGKILLs their process groups. POSIX only.

    Args:
        module: The FILE_OR_MODULE the workers import tasks from.
        workers: Number of worker processes.
        log_dir: Folder for the log file and the coordinator's port file.
    """

    def __init__(
        self, module: str, workers: int, log_dir: Path, options: FleetOptions | None = None
    ) -> None:
        self.module = module
        self.workers = workers
        self.options = options or FleetOptions()
        self.log_dir = log_dir
        self.log_path = log_dir / "fleet.log"
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        #: The coordinator's dashboard, ``http://127.0.0.1:PORT/``, once started.
        self.dashboard_url = ""

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        # The embedded fleet speaks plaintext on loopback: no credentials of a remote one.
        remote = ("FLEETFLOW_TLS_", "FLEETFLOW_TOKEN", "FLEETFLOW_AUTH_FILE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(remote)}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                process_group=0,
            )

    def start(self) -> str:
        """Start the coordinator, wait until it serves, then start the workers.

        Returns:
            The coordinator's address, ``127.0.0.1:PORT``.

        Raises:
            FleetStartError: the coordinator exited or did not serve within
                :data:`COORDINATOR_START_TIMEOUT_S`.
        """
        port_file = self.log_dir / "coordinator.port"
        http_port_file = self.log_dir / "dashboard.port"
        self.coordinator = self._spawn(
            [
                "-m",
                "fleetflow_coordinator",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                # The embedded fleet's state lives and dies with this run.
                "--db",
                str(self.log_dir / "fleetflow.db"),
                "--http",
                "127.0.0.1:0",
                "--http-port-file",
                str(http_port_file),
                "--unschedulable-timeout",
                f"{self.options.unschedulable_timeout_s:g}",
            ]
        )
        port = self._wait_for_port(port_file)
        with contextlib.suppress(FileNotFoundError, ValueError):  # written before the gRPC port
            self.dashboard_url = f"http://127.0.0.1:{int(http_port_file.read_text())}/"
        address = f"127.0.0.1:{port}"
        capacity = self.options.worker_args(self.workers)
        for _ in range(self.workers):
            self.worker_processes.append(
                self._spawn(
                    [
                        "-m",
                        "fleetflow_worker",
                        "--coordinator",
                        address,
                        "--module",
                        self.module,
                        *capacity,
                    ]
                )
            )
        return address

    def wait_for_workers(self, count: Callable[[], int]) -> None:
        """Wait until every worker has registered (``count()`` reports how many have).

        Submitting only then lets the coordinator judge at once what this
        fixed-size fleet can never run.

        Raises:
            FleetStartError: a process exited, or the workers did not register
                within :data:`WORKERS_START_TIMEOUT_S`.
        """
        give_up_at = time.monotonic() + WORKERS_START_TIMEOUT_S
        while time.monotonic() < give_up_at:
            self.check()
            exited = [p.returncode for p in self.worker_processes if p.poll() is not None]
            if exited:
                codes = sorted(set(exited))
                raise FleetStartError(
                    f"a worker exited (codes {codes}) before registering; see {self.log_path}"
                )
            if count() >= self.workers:
                return
            time.sleep(0.05)
        raise FleetStartError(
            f"the {self.workers} workers did not register within {WORKERS_START_TIMEOUT_S:g} s; "
            f"see {self.log_path}"
        )

    def _wait_for_port(self, port_file: Path) -> int:
        assert self.coordinator is not None
        give_up_at = time.monotonic() + COORDINATOR_START_TIMEOUT_S
        while time.monotonic() < give_up_at:
            code = self.coordinator.poll()
            if code is not None:
                raise FleetStartError(
                    f"the coordinator exited with code {code} before serving; see {self.log_path}"
                )
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(port_file.read_text().strip())
            time.sleep(0.05)
        raise FleetStartError(
            f"the coordinator did not serve within {COORDINATOR_START_TIMEOUT_S:g} s; "
            f"see {self.log_path}"
        )

    def check(self) -> None:
        """Raise :class:`FleetStartError` if the coordinator or every worker has exited."""
        if self.coordinator is not None and self.coordinator.poll() is not None:
            raise FleetStartError(
                f"the coordinator exited with code {self.coordinator.returncode}; "
                f"see {self.log_path}"
            )
        if self.worker_processes and all(p.poll() is not None for p in self.worker_processes):
            codes = sorted({p.returncode for p in self.worker_processes})
            raise FleetStartError(f"every worker exited (codes {codes}); see {self.log_path}")

    def stop(self) -> None:
        """Stop every started process within about :data:`STOP_GRACE_S`.

        Workers get SIGTERM first, so that while they drain they can still
        report outcomes to the coordinator; the coordinator gets SIGTERM once
        they are gone (or the grace period is over). Whatever is left is
        SIGKILLed together with its process group.
        """
        give_up_at = time.monotonic() + STOP_GRACE_S
        try:
            self._terminate(self.worker_processes, give_up_at)
            if self.coordinator is not None:
                self._terminate([self.coordinator], max(give_up_at, time.monotonic() + 1.0))
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, kill below
            pass
        finally:
            for process in [*self.worker_processes, *filter(None, [self.coordinator])]:
                # Each child leads its own process group; SIGKILL the group so
                # that helpers it started (process pools) go too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    @staticmethod
    def _terminate(processes: list[subprocess.Popen[bytes]], give_up_at: float) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, give_up_at - time.monotonic()))


@contextlib.contextmanager
def sigterm_raises_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the block runs, so cleanup code runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
