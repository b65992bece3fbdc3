from __future__ import annotations

import pytest

from .fleet import Fleet


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the fleet's process logs to a failed test's report."""
    rep = yield
    funcargs = getattr(item, "funcargs", {})
    fleet = funcargs.get("fleet")
    if rep.when == "call" and rep.failed and isinstance(fleet, Fleet):
        rep.sections.append(("fleet process logs", fleet.logs()))
    procs = funcargs.get("procs")
    if rep.when == "call" and rep.failed and isinstance(procs, list):
        logs = "\n".join(f"==== {p.log_path.name}\n{p.log()[-4000:]}" for p in procs)
        rep.sections.append(("process logs", logs))
    return rep
