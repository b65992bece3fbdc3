"""Session-wide isolation: no test reads a configuration file it did not write."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    # A developer's ~/.config/fleetflow/fleetflow.toml or an exported
    # FLEETFLOW_CONFIG/FLEETFLOW_PROFILE must not steer the processes tests start.
    home = tempfile.mkdtemp(prefix="fleetflow-test-config-")
    os.environ["XDG_CONFIG_HOME"] = home
    for name in ("FLEETFLOW_CONFIG", "FLEETFLOW_PROFILE"):
        os.environ.pop(name, None)
