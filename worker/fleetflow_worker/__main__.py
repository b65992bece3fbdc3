"""``python -m fleetflow_worker``: the same command as ``fleetflow worker``."""

# Signals first (issue 11): SIGTERM/SIGINT while the modules below import (about
# a second) end the process at once, with 128 + the signal number, even as PID 1
# in a container. This is fleetflow.startup's rule, inlined because importing
# any fleetflow module first would leave that second uncovered.
import os
import signal

for _signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

from fleetflow_worker.cli import command  # noqa: E402

if __name__ == "__main__":
    command(prog_name="python -m fleetflow_worker")
