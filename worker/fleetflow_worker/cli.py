"""``fleetflow worker`` (also ``python -m fleetflow_worker``): run a worker process."""

from __future__ import annotations

import asyncio
import signal
import traceback

import click
import uvloop
from fleetflow.execution import Task
from fleetflow.resources import parse_quantity
from fleetflow.settings import flags_from_click
from fleetflow.startup import exit_on_signal_during_startup

from fleetflow_worker._child import load_tasks
from fleetflow_worker._pool import PoolStartError
from fleetflow_worker.capacity import parse_resource_option
from fleetflow_worker.gpus import GpuSelectionError
from fleetflow_worker.logs import LEVELS, configure_logging
from fleetflow_worker.runtime import Worker
from fleetflow_worker.settings import DEFAULT_COORDINATOR, WorkerSettings

__all__ = ["command", "load_all_tasks"]


def _memory(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_quantity(value, "memory")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _resources(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    try:
        return dict(parse_resource_option(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def load_all_tasks(module_specs: tuple[str, ...] | list[str]) -> dict[str, Task]:
    """Import every ``--module`` and collect its tasks.

    Raises:
        click.ClickException: a module fails to import, or none defines a task.
    """
    tasks: dict[str, Task] = {}
    for spec in module_specs:
        try:
            found = load_tasks([spec])
        except Exception as exc:
            traceback.print_exc()
            raise click.ClickException(f"--module {spec}: {type(exc).__name__}: {exc}") from None
        tasks.update(found)
    if not tasks:
        raise click.ClickException(
            f"no fleetflow tasks in {', '.join(module_specs)}: define them with "
            "@fleetflow.task when the module is imported"
        )
    return tasks


@click.command(name="worker", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--coordinator",
    default=None,
    metavar="HOST:PORT[,HOST:PORT...]",
    help="Coordinator address (or FLEETFLOW_COORDINATOR); several (hot standby on "
    f"PostgreSQL): the worker follows the active one.  [default: {DEFAULT_COORDINATOR}]",
)
@click.option(
    "--module",
    "modules",
    multiple=True,
    required=True,
    metavar="MODULE_OR_FILE",
    help="User module (dotted name or .py file) whose tasks this worker runs. Repeatable.",
)
@click.option(
    "--cpu",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="CPU capacity in logical CPUs; also sizes the process pool.  [default: all]",
)
@click.option(
    "--memory",
    callback=_memory,
    metavar="QUANTITY",
    help="Memory capacity, e.g. 16Gi or 8GB.  [default: total memory]",
)
@click.option(
    "--resource",
    "resources",
    multiple=True,
    callback=_resources,
    metavar="NAME=AMOUNT",
    help="Custom capacity, e.g. gpu=1. Repeatable.",
)
@click.option(
    "--gpus",
    default=None,
    metavar="IDS|none|all",
    help="NVIDIA GPUs to offer, e.g. 0,2 (as nvidia-smi numbers them), or none "
    "[env FLEETFLOW_GPUS].  [default: all that CUDA_VISIBLE_DEVICES leaves visible]",
)
@click.option(
    "--executor",
    default=None,
    metavar="process|thread|dask|NAME",
    help="What runs plain def tasks: process (one killable process per attempt), thread "
    "(I/O-bound sync code), dask (an existing Dask cluster, whose capacity is offered), or "
    "the name of an [[executors]] entry of the configuration file [env FLEETFLOW_EXECUTOR].  "
    "[default: the file's first entry, else process]",
)
@click.option(
    "--dask-scheduler",
    "dask_address",
    default=None,
    metavar="tcp://HOST:PORT",
    help="The Dask scheduler of --executor dask [env FLEETFLOW_DASK_ADDRESS].",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Most task runs executing at once.",
)
@click.option(
    "--pool",
    "pools",
    multiple=True,
    metavar="NAME",
    help="Worker pool to serve (repeatable); tasks declare theirs with @task(pool=...).  "
    "[default: default]",
)
@click.option("--worker-id", default=None, help="[default: HOSTNAME-PID-RANDOM]")
@click.option(
    "--drain-grace",
    "drain_grace_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM/SIGINT, seconds running task runs may take to finish.",
)
@click.option(
    "--task-nice",
    type=click.IntRange(min=0, max=19),
    default=10,
    show_default=True,
    help="Niceness added to task processes, so heartbeats flow when tasks use every CPU.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most short task runs leased as one batch (one slot, run in order); 1: no batches.",
)
@click.option(
    "--any-version",
    is_flag=True,
    default=None,
    help="Run task runs whatever version of the tasks' code they were submitted with "
    "(normally only those whose fingerprint matches this worker's code). Warns at start.",
)
@click.option(
    "--tls-ca",
    default=None,
    metavar="PATH",
    help="Speak TLS, verifying the coordinator against this PEM CA bundle [env FLEETFLOW_TLS_CA].",
)
@click.option("--tls-cert", default=None, metavar="PATH", help="PEM client certificate (mTLS).")
@click.option("--tls-key", default=None, metavar="PATH", help="PEM private key of --tls-cert.")
@click.option(
    "--token-file",
    default=None,
    metavar="PATH",
    help="File holding this worker's token [env FLEETFLOW_TOKEN_FILE, or FLEETFLOW_TOKEN].",
)
@click.option(
    "--result-store",
    default=None,
    metavar="URL",
    help="Reach the result store here instead of where the coordinator says "
    "(the same shared folder mounted at another path) [default: the coordinator's].",
)
@click.option(
    "--result-store-direct/--no-result-store-direct",
    default=None,
    help="Use the coordinator-hosted store's folder directly when it is on this machine.",
)
@click.option(
    "--spool-dir",
    default=None,
    metavar="PATH",
    help="Local folder for payloads streamed to and from a coordinator-hosted store "
    "[default: a temporary folder].",
)
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
def command(
    coordinator: str | None,
    modules: tuple[str, ...],
    cpu: float | None,
    memory: float | None,
    resources: dict[str, float],
    gpus: str | None,
    executor: str | None,
    dask_address: str | None,
    max_concurrency: int,
    pools: tuple[str, ...],
    worker_id: str | None,
    drain_grace_s: float,
    task_nice: int,
    max_batch: int,
    any_version: bool | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    token_file: str | None,
    result_store: str | None,
    result_store_direct: bool | None,
    spool_dir: str | None,
    log_level: str,
) -> None:
    """Run the tasks of user modules for a coordinator until SIGTERM or SIGINT.

    A first signal drains: no new task runs; running ones get --drain-grace
    seconds and their outcomes are reported; whatever still runs then is
    stopped and handed back to the coordinator, which re-queues it at once.
    A second signal skips the rest of the grace period. Exits 0.
    """
    # Signals first: until the drain handlers are in place (after the user
    # modules are imported), SIGTERM/SIGINT end the process at once.
    exit_on_signal_during_startup("worker")
    configure_logging(log_level)
    tasks = load_all_tasks(modules)
    try:
        flags, names = flags_from_click(click.get_current_context(), WorkerSettings)
        for option, field, flag in (
            (tls_cert, "tls_client_cert", "--tls-cert"),
            (tls_key, "tls_client_key", "--tls-key"),
        ):
            if option:
                flags[field], names[field] = option, flag
        settings = WorkerSettings.load(flags, flag_names=names).settings
        # unreadable certificate files fail here, not later
        settings.credentials.channel_credentials(settings.coordinator)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        worker = Worker(settings, tasks, list(modules))
    except GpuSelectionError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(worker))
    except PoolStartError as exc:
        raise click.ClickException(str(exc)) from None


async def _serve(worker: Worker) -> None:
    """Run the worker with SIGTERM/SIGINT wired to a drain (the second forces)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        worker.stop(force=len(received) > 1)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
