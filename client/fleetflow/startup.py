"""Signals first: SIGTERM or SIGINT during a process's start-up ends it at once.

A coordinator opening a big database, or a worker importing user modules,
may take seconds before its event loop installs the graceful handlers. In a
container the process often runs as PID 1, where a signal with no handler is
ignored, so a SIGTERM in that window used to be lost (issue 11). Entry points
call :func:`exit_on_signal_during_startup` before anything slow (opening the
database, importing user code, connecting); the event loop's graceful
handlers replace it once the process serves.

Exiting at once is safe there: nothing is acknowledged to anyone before the
process serves, and every store survives a process killed at any moment.
"""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["exit_on_signal_during_startup"]


def exit_on_signal_during_startup(process: str) -> None:
    """Make SIGTERM/SIGINT end this process at once, with status 128 + signal (143, 130).

    Args:
        process: What is starting (``"coordinator"``, ``"worker"``): named in
            the one line written to stderr.
    """

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        line = (
            f'{{"event": "{process}_stopped_during_startup", "signal": "{name}", '
            f'"level": "warning", "timestamp": {time.time():.3f}}}\n'
        )
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)
