"""fleetflow worker: runs the tasks of user modules for a fleetflow coordinator.

Start one with ``fleetflow worker --module my_tasks.py`` (or
``python -m fleetflow_worker``), or embed it::

    settings = WorkerSettings(coordinator="127.0.0.1:50051")
    worker = Worker(settings, tasks, module_specs=["my_tasks.py"])
    await worker.run()  # until worker.stop()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetflow_worker.runtime import Worker
    from fleetflow_worker.settings import WorkerSettings

__all__ = ["Worker", "WorkerSettings"]


def __getattr__(name: str) -> Any:
    """Import ``Worker``/``WorkerSettings`` on first use (PEP 562).

    ``python -m fleetflow_worker`` imports this package before its
    ``__main__``; keeping it light lets ``__main__`` install the start-up
    signal handlers before gRPC and the user's modules load.
    """
    if name == "Worker":
        from fleetflow_worker.runtime import Worker

        return Worker
    if name == "WorkerSettings":
        from fleetflow_worker.settings import WorkerSettings

        return WorkerSettings
    raise AttributeError(f"module 'fleetflow_worker' has no attribute {name!r}")
