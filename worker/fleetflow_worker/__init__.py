"""fleetflow worker: runs the tasks of user modules for a fleetflow coordinator.

Start one with ``fleetflow worker --module my_tasks.py`` (or
``python -m fleetflow_worker``), or embed it::

    settings = WorkerSettings(coordinator="127.0.0.1:50051")
    worker = Worker(settings, tasks, module_specs=["my_tasks.py"])
    await worker.run()  # until worker.stop()
"""

from fleetflow_worker.runtime import Worker
from fleetflow_worker.settings import WorkerSettings

__all__ = ["Worker", "WorkerSettings"]
