"""Code versions: whether a worker runs the version of a task's code a node was submitted with.

See docs/architecture.md, "Task identity and versions". Pure.
"""

from __future__ import annotations

from fleetflow_coordinator.core.model import NodeRecord, WorkerRecord

__all__ = ["runs_version"]


def runs_version(worker: WorkerRecord, node: NodeRecord) -> bool:
    """Whether ``worker`` runs the code version ``node`` was submitted with.

    A node without a fingerprint (``@task(any_version=True)``, or stored before
    fingerprints existed) and a worker started with ``--any-version`` or
    reporting none for the task (``any_version`` on its side, or an older
    worker) match every version. See docs/architecture.md, "Task identity
    and versions".
    """
    want = node.fingerprint
    if not want or worker.any_version:
        return True
    have = worker.task_fingerprints.get(node.task_name, "")
    return not have or have == want
