"""Session-wide isolation: no test reads a configuration file it did not write.

Nor does a test's child process inherit how the runner was started: SIGINT is
caught here (Python's KeyboardInterrupt), so the processes tests start begin
with SIGINT at its default, as a command run in a terminal does.
"""

from __future__ import annotations

import os
import signal
import tempfile


def pytest_configure(config):
    # A developer's ~/.config/fleetflow/fleetflow.toml or an exported
    # FLEETFLOW_CONFIG/FLEETFLOW_PROFILE must not steer the processes tests start.
    home = tempfile.mkdtemp(prefix="fleetflow-test-config-")
    os.environ["XDG_CONFIG_HOME"] = home
    for name in ("FLEETFLOW_CONFIG", "FLEETFLOW_PROFILE"):
        os.environ.pop(name, None)
    # A runner started as a background job of a script (`pytest ... &`, as the
    # CI loop does) ignores SIGINT, and an ignored signal stays ignored across
    # fork and exec: every CLI a test started then ignored its "Ctrl-C" (Python
    # raises KeyboardInterrupt only where SIGINT was not ignored at start-up), so
    # test_ctrl_c_cancels_the_flow_run_it_started failed in every CI run. A
    # caught signal is reset to its default at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
