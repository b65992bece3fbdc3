"""The dashboard's graph, task stream, task-run list and task-run page in real Chromium (issue 17).

Against a real coordinator and two real workers; 2,000 task runs of which 20
fail (modest on purpose: the list is paged on the server, whatever the size).
"""

from __future__ import annotations

import os
import shutil

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import ROOT, wait_until
from .test_dashboard import browser_page  # skips this module too without Chromium

pytestmark = pytest.mark.slow

VIEW_FLOWS = ROOT / "tests" / "e2e" / "view_flows.py"
flows = load_module(str(VIEW_FLOWS))
#: The README shows this one; FLEETFLOW_UPDATE_SCREENSHOT=1 makes the test refresh it.
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard-graph-stream.png"
N, EVERY = 2000, 100


def stream_workers(client) -> list[str]:
    return [w.worker_id for w in client.list_workers()]


def test_graph_stream_and_paged_task_runs_of_a_run_with_failures(fleet, tmp_path):
    fleet.start_coordinator()
    fleet.start_worker(module=VIEW_FLOWS)
    fleet.start_worker(module=VIEW_FLOWS)
    with Client(fleet.address) as client, browser_page(tmp_path / "profile") as (page, errors):
        wait_until(lambda: len(client.list_workers()) == 2, 30, what="two workers")
        run = client.submit(flows.some_fail, n=N, every=EVERY)
        assert run.wait(timeout=120) == "FAILED"

        page.goto(f"{fleet.http_url}/#flow={run.id}")
        page.wait_for_function(
            "() => window.fleetflowViews && window.fleetflowViews.renders.list > 0"
        )
        # Graph: the 2,000-item map is one node with its counts; the sum is one more.
        page.wait_for_function("() => document.querySelectorAll('#graph g.gnode').length === 2")
        check = page.text_content('#graph g.gnode[data-node="0"]')
        assert "check (map)" in check and "2,000/2,000" in check and "20 failed" in check
        assert "upstream failed" in page.text_content('#graph g.gnode[data-node="1"]')
        assert page.locator("#graph path.edge").count() == 1

        # Task stream: one bar per attempt, one row per worker, drawn by Chart.js.
        page.wait_for_function("() => window.fleetflowViews.chart !== null")
        bars = page.evaluate(
            "() => window.fleetflowViews.chart.data.datasets.reduce((n, d) => n + d.data.length, 0)"
        )
        rows = page.evaluate("() => window.fleetflowViews.chart.data.labels")
        assert bars == N and {r.split(" · ")[0] for r in rows} == set(stream_workers(client))
        # Batch members run one after another: at most one lane per CPU (2 per worker here).
        assert len(rows) <= 4, rows
        assert "2,000 attempts on 2 workers" in page.inner_text("#stream-meta")

        # Task runs: paged on the server, 50 a page.
        assert "1–50 of 2,000" in page.inner_text("#tr-range")
        page.click("#tr-next")
        page.wait_for_function(
            "() => document.querySelector('#tr-range').textContent.includes('51–100')"
        )
        assert page.locator("#task-runs tbody tr").count() == 50
        # Filter: failed only lists exactly the 20 failures.
        page.select_option("#tr-state", "failed,timed_out")
        page.wait_for_function(
            "() => document.querySelector('#tr-range').textContent.includes('of 20)')"
        )
        rows = page.locator("#task-runs tbody tr")
        assert rows.count() == 20
        texts = [rows.nth(i).inner_text() for i in range(20)]
        assert [f"check[{i}]" in t for i, t in zip(range(0, N, EVERY), texts, strict=True)] == [
            True
        ] * 20
        assert all("ValueError" in t and "is bad" in t for t in texts)
        # Search by index.
        page.select_option("#tr-state", "")
        page.fill("#tr-index", "1234")
        page.dispatch_event("#tr-index", "change")
        page.wait_for_function(
            "() => document.querySelector('#tr-range').textContent.includes('of 1)')"
        )
        assert "check[1234]" in page.inner_text("#task-runs tbody")

        # A failed task run's page: attempts, worker, error and traceback.
        page.fill("#tr-index", "")
        page.select_option("#tr-state", "failed,timed_out")
        page.wait_for_function(
            "() => document.querySelector('#tr-range').textContent.includes('of 20)')"
        )
        page.click("#task-runs tbody tr >> nth=1")
        page.wait_for_selector("#task-run-panel:not([hidden])")
        assert "check[100]" in page.inner_text("#tr-title")
        assert page.inner_text("#tr-state-badge") == "FAILED"
        assert page.locator("#attempts tbody tr").count() == 1
        assert "Traceback (most recent call last)" in page.inner_text("#tr-error pre.traceback")
        assert "item 100 is bad" in page.inner_text("#tr-error")
        assert page.locator("#flow-cancel").is_hidden()  # the run has ended

        # A small run makes a readable picture of the graph and the stream.
        naps = client.submit(flows.stream_demo, n=12, seconds=0.3)
        assert naps.wait(timeout=60) == "FAILED"
        page.goto(f"{fleet.http_url}/#flow={naps.id}")
        page.wait_for_function(
            "id => { const v = window.fleetflowViews; return v.flowId === id && v.chart !== null "
            "&& v.chart.data.datasets.reduce((n, d) => n + d.data.length, 0) === 24; }",
            arg=naps.id,
        )
        shot = tmp_path / "graph-stream.png"
        page.locator("#graph-stream").screenshot(path=str(shot))
        if os.environ.get("FLEETFLOW_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, DOCS_SCREENSHOT)

        # The cancel button of a running flow run (no tokens here: loopback, no auth file).
        sleepy = client.submit(flows.naps, n=4, seconds=8)
        wait_until(lambda: client.get(sleepy.id).nodes[0].running > 0, 30, what="running")
        page.goto(f"{fleet.http_url}/#flow={sleepy.id}")
        page.wait_for_selector("#flow-cancel:not([hidden])")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#flow-cancel")
        page.wait_for_function(
            "() => document.querySelector('#flow-state').textContent === 'CANCELLED'"
        )
        assert sleepy.wait(timeout=30) == "CANCELLED"
        assert "cancelled" in page.inner_text("#flow-meta")
        assert not errors, errors
