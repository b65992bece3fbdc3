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
    fleet = item.funcargs.get("fleet") if hasattr(item, "funcargs") else None
    if rep.when == "call" and rep.failed and isinstance(fleet, Fleet):
        rep.sections.append(("fleet process logs", fleet.logs()))
    return rep
