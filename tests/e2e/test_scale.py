"""Issue 7, functional: a 100,000-item map completes with correct results (bounded in time).

Speed targets live in benchmarks/, not here: this only checks that a large map
finishes, every result is present once and in order, and the coordinator stays
within a generous memory bound.
"""

from __future__ import annotations

import psutil
import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import FLOWS

flows = load_module(str(FLOWS))
pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_hundred_thousand_item_map_completes_with_correct_results(fleet):
    address = fleet.start_coordinator()
    fleet.start_worker(cpu=1)
    fleet.start_worker(cpu=1)
    n = 100_000
    with Client(address) as client:
        run = client.submit(flows.map_inc, n=n)
        result = run.result(timeout=540)
        assert len(result) == n
        assert result == [i + 1 for i in range(n)]
        info = client.get(run.id)
        assert info.state == "COMPLETED" and info.completed == n + 1
    rss = psutil.Process(fleet.coordinator.pid).memory_info().rss
    assert rss < 2 * 1024**3, f"coordinator RSS {rss / 2**20:.0f} MiB"
