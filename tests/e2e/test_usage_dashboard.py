"""The dashboard's "where time went" and "requested vs used" sections in a real browser."""

from __future__ import annotations

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .test_dashboard import browser_page
from .test_usage_and_logs import USAGE_FLOWS

pytestmark = pytest.mark.slow

flows = load_module(str(USAGE_FLOWS))


def test_flow_run_view_shows_usage_against_requests_with_advice(fleet, tmp_path):
    fleet.start_coordinator()
    fleet.start_worker("--memory", "8Gi", module=USAGE_FLOWS, cpu=2)
    with Client(fleet.address) as client:
        run = client.submit(flows.sized, n=2, megabytes=200)
        run.result(timeout=90)
    with browser_page(tmp_path / "chromium-profile") as (page, errors):
        page.goto(f"{fleet.http_url}/#flow={run.id}")
        page.wait_for_selector('#usage tr[data-usage="usage_flows:hog"]')
        row = page.inner_text('#usage tr[data-usage="usage_flows:hog"]')
        assert "2.0 GiB" in row and "MiB /" in row, row
        page.wait_for_function(
            "() => document.querySelector('#advice').textContent.includes('hog requests memory')"
        )
        assert "consider" in page.inner_text("#advice")
        assert page.locator('#usage tr[data-usage="usage_flows:small"]').count() == 1
        assert (
            page.locator('#usage tr[data-usage="usage_flows:pair"]').count() == 0
        )  # async: unmeasured
        time_text = page.inner_text("#time-in-state")
        assert "running" in time_text and "queued (for a worker)" in time_text
        assert page.locator("#time-in-state .bar.time > span.running").count() == 1
        page.screenshot(path=str(tmp_path / "dashboard-usage.png"), full_page=True)
        assert not errors, errors
