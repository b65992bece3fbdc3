"""``python faulty_coordinator.py --listen ...``: a real coordinator with one injected fault.

The fault is the test's, not the product's: this wrapper patches one method
before running the ordinary ``fleetflow coordinator`` command.
``FF_TEST_FAULT`` names what breaks once ``FF_TEST_FAULT_AFTER_S`` seconds
have passed since start: ``tick`` (the timer loop's core call raises),
``commit`` (the store's write raises, as a full disk would) or ``fold``
(the dashboard's event fold raises).
"""

from __future__ import annotations

import os
import signal
import time

for _signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

from fleetflow_coordinator.cli import command  # noqa: E402
from fleetflow_coordinator.core import Scheduler  # noqa: E402
from fleetflow_coordinator.observe import Observer  # noqa: E402
from fleetflow_coordinator.store import SqliteStore, StoreError  # noqa: E402

FAULT = os.environ["FF_TEST_FAULT"]
ARMED_AT = time.monotonic() + float(os.environ.get("FF_TEST_FAULT_AFTER_S", "1.0"))


def _armed() -> bool:
    return time.monotonic() >= ARMED_AT


def _patch(owner: type, name: str, error: Exception) -> None:
    original = getattr(owner, name)

    def faulty(self, *args, **kwargs):
        if _armed():
            raise error
        return original(self, *args, **kwargs)

    setattr(owner, name, faulty)


if FAULT == "tick":
    _patch(Scheduler, "tick", RuntimeError("injected tick fault"))
elif FAULT == "commit":
    _patch(SqliteStore, "write", StoreError("injected write fault: disk full"))
elif FAULT == "fold":
    _patch(Observer, "catch_up", RuntimeError("injected fold fault"))
else:
    raise SystemExit(f"unknown FF_TEST_FAULT {FAULT!r}")

if __name__ == "__main__":
    command(prog_name="faulty coordinator")
