"""The client package never imports the coordinator or the worker packages."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import fleetflow, fleetflow.cli
others = ('fleetflow_coordinator', 'fleetflow_worker')
leaked = sorted(m for m in sys.modules if m.split('.')[0] in others)
assert not leaked, leaked
print("ok")
"""


def test_client_and_cli_do_not_import_coordinator_or_worker():
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
