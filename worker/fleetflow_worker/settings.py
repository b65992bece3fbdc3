"""Settings of one worker process, with every default in one place.

One schema (:mod:`fleetflow.settings`) serves flags (``--cpu``), environment
variables (``FLEETFLOW_CPU``) and the ``[worker]`` section of the
configuration file, in that order of precedence; :meth:`WorkerSettings.load`
merges them and the dataclass checks every rule when it is built.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fleetflow.credentials import Credentials
from fleetflow.resources import parse_quantity
from fleetflow.settings import (
    DEFAULT_COORDINATOR,
    CredentialSettings,
    Resolved,
    SettingsError,
    check_coordinator,
    resolve,
    setting,
    validate,
)

from fleetflow_worker.capacity import default_cpu, default_memory, parse_resource_option
from fleetflow_worker.gpus import parse_gpu_selection

__all__ = ["WorkerSettings", "default_worker_id", "DEFAULT_COORDINATOR", "SECTION"]

#: The configuration file's section for these settings.
SECTION = "worker"


def default_worker_id() -> str:
    """Return ``"{hostname}-{pid}-{8 hex digits}"``: unique per process start."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _memory(value: Any) -> float:
    """A memory quantity: a number of bytes or a string such as ``16Gi``."""
    if isinstance(value, str):
        return parse_quantity(value.strip(), "memory")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of bytes or a quantity such as 16Gi, got {value!r}")
    return float(value)


def _options(value: Any) -> dict[str, Any]:
    """Keyword arguments as a table (the file) or JSON object text (a flag or variable)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise ValueError(f"expected a JSON object, got {value!r} ({exc})") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table of keyword arguments, got {value!r}")
    return dict(value)


def _resources(value: Any) -> dict[str, float]:
    """Custom capacity from a table, ``NAME=AMOUNT`` text (comma-separated) or a list of it."""
    if isinstance(value, Mapping):
        out = {}
        for name, amount in value.items():
            text = amount if isinstance(amount, str) else repr(amount)
            if isinstance(amount, bool):
                raise ValueError(f"resources.{name}: expected a quantity, got {amount!r}")
            out.update([parse_resource_option(f"{name}={text}")])
        return out
    if isinstance(value, str):
        value = [p for p in value.split(",") if p.strip()]
    if isinstance(value, list | tuple):
        return dict(parse_resource_option(str(v)) for v in value)
    raise ValueError(f"expected a table of NAME = AMOUNT, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class WorkerSettings(CredentialSettings):
    """Everything a :class:`~fleetflow_worker.Worker` needs besides its tasks.

    The TLS and token fields (``tls_ca``, ``tls_client_cert``, ``tls_client_key``,
    ``token_file``, ``token``) are those of :class:`fleetflow.settings.CredentialSettings`;
    :meth:`load` turns them into ``credentials`` unless that is given.

    Raises:
        ValueError: (on construction) a field is out of range.
    """

    coordinator: str = setting(DEFAULT_COORDINATOR, help="Coordinator address HOST:PORT.")
    """Coordinator address, ``HOST:PORT``. Default ``127.0.0.1:50051``."""

    worker_id: str = setting(factory=default_worker_id, help="Stable for the process lifetime.")
    """Stable for the process lifetime. Default ``{hostname}-{pid}-{random hex}``."""

    cpu: float = setting(factory=default_cpu, gt=0, help="CPU capacity, logical CPUs.")
    """CPU capacity offered, in logical CPUs. Default: all logical CPUs. It also
    sizes the process pool for plain ``def`` tasks (``ceil(cpu)`` processes
    kept warm; more start on demand, e.g. for ``cpu=0.5`` tasks)."""

    memory: float = setting(
        factory=default_memory, ge=0, parse=_memory, help="Memory capacity, bytes or 16Gi."
    )
    """Memory capacity offered, in bytes. Default: the machine's total memory."""

    resources: Mapping[str, float] = setting(
        factory=dict, flag="--resource", parse=_resources, help="Custom capacity NAME=AMOUNT."
    )
    """Custom capacity, ``{name: amount}`` (e.g. ``{"gpu": 1}``). Default none."""

    gpus: str = setting("", help="GPUs offered: 0,2 (ids as nvidia-smi shows), none, or all.")
    """NVIDIA GPUs this worker offers: ``0,2`` (NVML indexes or ``GPU-`` UUIDs, as
    ``nvidia-smi`` shows them), ``none``, or ``all``/"" (default: every GPU NVML
    reports that the worker's ``CUDA_VISIBLE_DEVICES`` leaves visible). They are
    offered as capacity ``gpu`` and ``gpu_memory``; ``resources={"gpu": N}``
    overrides the count (see :mod:`fleetflow_worker.gpus`)."""

    pools: tuple[str, ...] = setting(("default",), flag="--pool", help="Worker pools served.")
    """Worker pools this worker serves (tasks pick one with ``@task(pool=...)``)."""

    executor: str = setting(
        "process",
        choices=("process", "thread", "dask"),
        help="What runs plain def task runs: process, thread or dask.",
    )
    """What runs the attempts of plain ``def`` tasks (:mod:`fleetflow_worker._executors`):
    ``process`` (default: one killable process per attempt), ``thread`` (threads
    of the worker's process, for I/O-bound sync code) or ``dask`` (futures on
    the Dask cluster at ``dask_address``, whose capacity the worker offers). In
    the configuration file it may also name an ``[[executors]]`` entry."""

    dask_address: str = setting(
        "", flag="--dask-scheduler", help="Dask scheduler tcp://HOST:PORT (--executor dask)."
    )
    """The Dask scheduler of the ``dask`` executor, ``tcp://HOST:PORT`` (an
    ``[[executors]]`` entry's ``address``). Required with that executor."""

    dask_options: Mapping[str, Any] = setting(
        factory=dict, parse=_options, help="Keyword arguments of distributed.Client (JSON)."
    )
    """Keyword arguments of ``distributed.Client`` for the ``dask`` executor (an
    ``[[executors]]`` entry's ``options``; JSON text in a variable). Default none."""

    max_concurrency: int = setting(1000, ge=1, help="Most task runs executing at once.")
    """Most task runs executing at once on this worker. Default 1000."""

    drain_grace_s: float = setting(30.0, ge=0, help="Seconds running task runs get on stop.")
    """On stop, how long running task runs may take to finish, seconds. Default 30."""

    lease_wait_s: float = setting(5.0, gt=0, help="Long-poll bound of LeaseTasks, seconds.")
    """Long-poll bound of each LeaseTasks call, seconds. Default 5."""

    flush_timeout_s: float = setting(10.0, ge=0, help="Seconds to report outcomes on stop.")
    """On stop, how long to keep trying to report outcomes, seconds. Default 10."""

    rpc_timeout_s: float = setting(10.0, gt=0, help="Deadline of unary RPCs, seconds.")
    """Deadline of unary RPCs other than the long poll, seconds. Default 10."""

    backoff_cap_s: float = setting(2.0, gt=0, help="Longest reconnect wait, seconds.")
    """Longest wait between retries while the coordinator is unreachable, seconds. Default 2."""

    report_batch_size: int = setting(2000, ge=1, help="Most outcomes per ReportOutcomes.")
    """Most outcomes per ReportOutcomes call. Default 2000."""

    max_batch: int = setting(256, ge=1, help="Most short task runs per leased batch.")
    """Most task runs the coordinator may lease in one batch (one slot, run one
    after another in one task process); it batches only task runs whose
    reported durations are short. 1 turns batches off. Default 256."""

    report_batch_bytes: int = setting(
        3 * 1024 * 1024, ge=1, help="Soft size limit of one ReportOutcomes, bytes."
    )
    """Soft size limit of one ReportOutcomes call, bytes (the coordinator's
    gRPC receive limit is 4 MiB by default). Default 3 MiB."""

    task_nice: int = setting(10, ge=0, le=19, help="Niceness added to task processes.")
    """Niceness added to task processes (0-19), so the worker's own loop, and
    with it the heartbeats, keeps its share of a CPU when task processes
    saturate every CPU. 0 keeps the worker's priority. Default 10."""

    usage_sample_s: float = setting(0.1, gt=0, help="Task process sampling period, seconds.")
    """How often a running task process is sampled (memory limit, peak
    memory, CPU time), seconds. Default 0.1."""

    memory_margin_fraction: float = setting(0.2, ge=0, help="Memory kill margin, fraction.")
    """A task process is killed when its resident memory exceeds its memory
    request times ``1 + memory_margin_fraction`` plus ``memory_margin_bytes``.
    Default 0.2 (20 %)."""

    memory_margin_bytes: float = setting(
        50 * 2**20, ge=0, parse=_memory, help="Memory kill margin, bytes."
    )
    """Fixed part of that margin (the interpreter and imported modules), bytes.
    Default 50 MiB."""

    credentials: Credentials = setting(
        factory=Credentials,
        help="TLS and token for the coordinator; load() builds it from the fields above.",
    )
    """TLS and token for the coordinator (``--tls-ca``, ``--tls-cert``/``--tls-key``,
    ``--token-file`` or ``FLEETFLOW_TOKEN``). Default: plaintext, no token."""

    result_store: str = setting(
        "", help="Reach the coordinator's result store at this fsspec URL instead."
    )
    """Reach the coordinator's result store at this fsspec URL instead of the
    one it names (the same shared folder mounted at another path here). ""
    (default) uses the coordinator's."""

    any_version: bool = setting(
        False, help="Run task runs whatever code version they were submitted with."
    )
    """Lease task runs whatever version of the task's code they were submitted
    with (the fingerprints need not match). Logged as a warning at every start;
    for a fleet that cannot run two versions side by side. Default False."""

    result_store_direct: bool = setting(
        True, help="Use a coordinator-hosted store's folder directly when visible here."
    )
    """Use the coordinator-hosted store's folder directly when it is visible
    on this machine (the coordinator runs here); False always streams through
    the coordinator, as from another machine. Default True."""

    spool_dir: str = setting("", help="Local folder for payloads of a remote hosted store.")
    """Local folder for payloads moving to and from a coordinator-hosted store
    on another machine; "" (default) is a temporary folder."""

    spool_max_bytes: int = setting(2 << 30, ge=0, help="Spool size kept for reuse, bytes.")
    """Payloads kept in the spool for reuse; past this, the oldest not in use
    are deleted, bytes. Default 2 GiB."""

    def __post_init__(self) -> None:
        validate(self)

    def _check(self) -> None:
        """Rules beyond one field's range."""
        check_coordinator("coordinator", self.coordinator)
        if not self.worker_id:
            raise SettingsError("worker_id", "worker_id must not be empty")
        try:
            parse_gpu_selection(self.gpus)
        except ValueError as exc:
            raise SettingsError("gpus", str(exc)) from None
        if self.executor == "dask" and not self.dask_address:
            raise SettingsError(
                "dask_address",
                "the dask executor needs its scheduler: --dask-scheduler tcp://HOST:PORT "
                "(or an [[executors]] entry with an address)",
            )
        if not self.pools or not all(self.pools):
            raise SettingsError("pools", f"pools must be non-empty names, got {self.pools!r}")
        for name, amount in self.resources.items():
            if name in ("cpu", "memory"):
                raise SettingsError(
                    "resources", f"resource {name!r} is set with its own option, not resources"
                )
            if not (isinstance(amount, int | float) and math.isfinite(amount) and amount >= 0):
                raise SettingsError(
                    "resources", f"resources[{name!r}] must be a non-negative number"
                )
            if name == "gpu" and amount != math.floor(amount):
                # Devices are whole: gpu=1.5 would offer room that no device
                # backs, and an attempt leased into it would wait for ever.
                raise SettingsError(
                    "resources",
                    f"resources['gpu'] must be a whole number of devices, got {amount:g} "
                    "(tasks ask for fractions such as gpu=0.5; workers offer devices)",
                )

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        flag_names: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        config: Any = "auto",
    ) -> Resolved[WorkerSettings]:
        """Resolve the settings: flags, then environment, then file, then defaults.

        Args:
            flags: ``{field: value}`` from the command line (None: not given).
            flag_names: ``{field: "--flag"}`` as typed, for messages.
            environ: The environment (default ``os.environ``).
            config: A :class:`fleetflow.config.Config`; ``"auto"`` finds and
                reads the file in effect; None reads none.

        Returns:
            The settings and where each value came from.

        Raises:
            fleetflow.settings.SettingsError: a value is malformed or out of
                range, or the file's ``[worker]`` section has an unknown key.
        """
        if config == "auto":
            from fleetflow.config import load_config

            config = load_config(environ=environ)
        resolved = resolve(
            cls,
            section=SECTION,
            flags=flags,
            flag_names=flag_names,
            environ=environ,
            config=config,
        )
        if resolved.sources["credentials"].kind == "default":
            built = replace(resolved.settings, credentials=resolved.settings.build_credentials())
            resolved = Resolved(built, resolved.sources)
        return resolved

    @property
    def capacity(self) -> dict[str, float]:
        """Configured capacity: ``{"cpu", "memory", **resources}``.

        The worker adds the discovered GPUs (``gpu``, ``gpu_memory``) unless
        ``resources`` sets them (:attr:`fleetflow_worker.Worker.capacity`).
        """
        return {"cpu": float(self.cpu), "memory": float(self.memory), **self.resources}

    @property
    def pool_size(self) -> int:
        """Processes in the pool for plain ``def`` tasks: ``max(1, ceil(cpu))``."""
        return max(1, math.ceil(self.cpu))
