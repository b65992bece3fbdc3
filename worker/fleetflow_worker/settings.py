"""Settings of one worker process, with every default in one place."""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetflow.addresses import parse_addresses
from fleetflow.credentials import Credentials

from fleetflow_worker.capacity import default_cpu, default_memory

__all__ = ["WorkerSettings", "default_worker_id", "DEFAULT_COORDINATOR"]

#: Address the worker dials when none is given (``--coordinator``, FLEETFLOW_COORDINATOR).
DEFAULT_COORDINATOR = "127.0.0.1:50051"


def default_worker_id() -> str:
    """Return ``"{hostname}-{pid}-{8 hex digits}"``: unique per process start."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Everything a :class:`~fleetflow_worker.Worker` needs besides its tasks.

    Raises:
        ValueError: (on construction) a field is out of range.
    """

    coordinator: str = DEFAULT_COORDINATOR
    """Coordinator address, ``HOST:PORT``. Default ``127.0.0.1:50051``."""

    worker_id: str = field(default_factory=default_worker_id)
    """Stable for the process lifetime. Default ``{hostname}-{pid}-{random hex}``."""

    cpu: float = field(default_factory=default_cpu)
    """CPU capacity offered, in logical CPUs. Default: all logical CPUs. It also
    sizes the process pool for plain ``def`` tasks (``ceil(cpu)`` processes
    kept warm; more start on demand, e.g. for ``cpu=0.5`` tasks)."""

    memory: float = field(default_factory=default_memory)
    """Memory capacity offered, in bytes. Default: the machine's total memory."""

    resources: Mapping[str, float] = field(default_factory=dict)
    """Custom capacity, ``{name: amount}`` (e.g. ``{"gpu": 1}``). Default none."""

    pools: tuple[str, ...] = ("default",)
    """Worker pools this worker serves (tasks pick one with ``@task(pool=...)``)."""

    max_concurrency: int = 1000
    """Most task runs executing at once on this worker. Default 1000."""

    drain_grace_s: float = 30.0
    """On stop, how long running task runs may take to finish, seconds. Default 30."""

    lease_wait_s: float = 5.0
    """Long-poll bound of each LeaseTasks call, seconds. Default 5."""

    flush_timeout_s: float = 10.0
    """On stop, how long to keep trying to report outcomes, seconds. Default 10."""

    rpc_timeout_s: float = 10.0
    """Deadline of unary RPCs other than the long poll, seconds. Default 10."""

    backoff_cap_s: float = 2.0
    """Longest wait between retries while the coordinator is unreachable, seconds. Default 2."""

    report_batch_size: int = 2000
    """Most outcomes per ReportOutcomes call. Default 2000."""

    max_batch: int = 256
    """Most task runs the coordinator may lease in one batch (one slot, run one
    after another in one task process); it batches only task runs whose
    reported durations are short. 1 turns batches off. Default 256."""

    report_batch_bytes: int = 3 * 1024 * 1024
    """Soft size limit of one ReportOutcomes call, bytes (the coordinator's
    gRPC receive limit is 4 MiB by default). Default 3 MiB."""

    task_nice: int = 10
    """Niceness added to task processes (0-19), so the worker's own loop, and
    with it the heartbeats, keeps its share of a CPU when task processes
    saturate every CPU. 0 keeps the worker's priority. Default 10."""

    usage_sample_s: float = 0.1
    """How often a running task process is sampled (memory limit, peak
    memory, CPU time), seconds. Default 0.1."""

    memory_margin_fraction: float = 0.2
    """A task process is killed when its resident memory exceeds its memory
    request times ``1 + memory_margin_fraction`` plus ``memory_margin_bytes``.
    Default 0.2 (20 %)."""

    memory_margin_bytes: float = 50 * 2**20
    """Fixed part of that margin (the interpreter and imported modules), bytes.
    Default 50 MiB."""

    credentials: Credentials = field(default_factory=Credentials)
    """TLS and token for the coordinator (``--tls-ca``, ``--tls-cert``/``--tls-key``,
    ``--token-file`` or ``FLEETFLOW_TOKEN``). Default: plaintext, no token."""

    def __post_init__(self) -> None:
        parse_addresses(self.coordinator)  # HOST:PORT[,HOST:PORT...]; names a bad entry
        if not self.worker_id:
            raise ValueError("worker_id must not be empty")
        if not (math.isfinite(self.cpu) and self.cpu > 0):
            raise ValueError(f"cpu must be a positive number of CPUs, got {self.cpu!r}")
        if not (math.isfinite(self.memory) and self.memory >= 0):
            raise ValueError(f"memory must be a non-negative number of bytes, got {self.memory!r}")
        for name, amount in self.resources.items():
            if name in ("cpu", "memory"):
                raise ValueError(f"resource {name!r} is set with its own option, not resources")
            if not (math.isfinite(amount) and amount >= 0):
                raise ValueError(f"resources[{name!r}] must be a non-negative number")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency!r}")
        for name in ("drain_grace_s", "flush_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("lease_wait_s", "rpc_timeout_s", "backoff_cap_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.task_nice <= 19:
            raise ValueError(f"task_nice must be in 0..19, got {self.task_nice!r}")
        if not self.usage_sample_s > 0:
            raise ValueError("usage_sample_s must be > 0")
        if self.memory_margin_fraction < 0 or self.memory_margin_bytes < 0:
            raise ValueError("memory_margin_fraction and memory_margin_bytes must be >= 0")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch!r}")
        if self.report_batch_size < 1 or self.report_batch_bytes < 1:
            raise ValueError("report_batch_size and report_batch_bytes must be >= 1")

    @property
    def capacity(self) -> dict[str, float]:
        """Total capacity announced at registration: ``{"cpu", "memory", **resources}``."""
        return {"cpu": float(self.cpu), "memory": float(self.memory), **self.resources}

    @property
    def pool_size(self) -> int:
        """Processes in the pool for plain ``def`` tasks: ``max(1, ceil(cpu))``."""
        return max(1, math.ceil(self.cpu))
