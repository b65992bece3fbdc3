"""A worker runs only the code it registered (issue 11, item 1).

The worker reports each task's fingerprint when it registers. Its task
processes import the modules again (at start, and whenever one is replaced);
if the file was edited in between, they would run other code than the worker
claimed, so such a process is refused and the attempt fails as an
infrastructure failure (another worker may run it).
"""

from __future__ import annotations

import os

import pytest
from fleetflow_worker._child import load_tasks
from fleetflow_worker._pool import PoolStartError, TaskProcessPool


async def test_a_task_process_that_imported_edited_code_is_refused(tmp_path):
    path = tmp_path / "versions_drift.py"
    path.write_text("from fleetflow import task\n\n@task\ndef f():\n    return 1\n")
    tasks = load_tasks([str(path)])
    registered = {name: task.fingerprint for name, task in tasks.items()}
    pool = TaskProcessPool(1, [str(path)], fingerprints=registered)
    try:
        await pool.start()  # the same code: fine
    finally:
        await pool.close()
    path.write_text("from fleetflow import task\n\n@task\ndef f():\n    return 2\n")
    os.utime(path, (0, 2_000_000_000))  # a new mtime: no stale bytecode cache
    pool = TaskProcessPool(1, [str(path)], fingerprints=registered)
    try:
        with pytest.raises(PoolStartError) as caught:
            await pool.start()
    finally:
        pool.kill()
        await pool.close()
    message = str(caught.value)
    assert "'versions_drift:f' changed on disk since this worker started" in message
    assert registered["versions_drift:f"] in message and "restart the worker" in message
