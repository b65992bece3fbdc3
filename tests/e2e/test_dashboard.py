"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright),
against a real coordinator and two real workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run does it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is in the dev extra (pip install -e '.[dev]')"
)

OBSERVED = Path(__file__).resolve().with_name("observed_flows.py")
observed = load_module(str(OBSERVED))
#: The README shows this screenshot; FLEETFLOW_UPDATE_SCREENSHOT=1 makes the test refresh it.
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def browser_page(profile: Path):
    """A page in a fresh headless Chromium profile; closed on exit."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,  # adds --headless
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            context.close()


def _count(page, selector: str) -> int:
    return int(page.inner_text(selector).replace(",", "").strip() or 0)


def test_page_shows_a_running_flow_run_whose_counts_rise_live_to_completion(fleet, tmp_path):
    fleet.start_coordinator()
    fleet.start_worker(module=OBSERVED)
    fleet.start_worker(module=OBSERVED)
    n = 160
    with (
        Client(fleet.address) as client,
        browser_page(tmp_path / "chromium-profile") as (
            page,
            errors,
        ),
    ):
        failing = client.submit(observed.audit, n=30)
        assert failing.wait(timeout=60) == "FAILED"
        run = client.submit(observed.crawl, n=n, seconds=0.2)

        started = time.monotonic()
        page.goto(fleet.http_url + "/")
        page.evaluate("window.__loadedOnce = true")  # gone if the page ever reloads
        page.wait_for_selector(f'#flows tr[data-flow="{run.id}"]')
        page.wait_for_function(
            "id => document.querySelector('#flow-title').textContent.includes(id)", arg=run.id
        )
        first_paint_s = time.monotonic() - started
        assert page.inner_text("#flow-state") == "RUNNING"
        assert page.locator("#nodes tbody tr").count() == 3  # a 160-item map is one row

        fetched = '#nodes tr[data-node="0"] td.completed-count'
        seen: list[int] = []
        shot = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: 60 s at 5 samples per second
            seen.append(_count(page, fetched))
            if not shot and n * 0.45 <= seen[-1] <= n * 0.9:
                page.screenshot(path=str(tmp_path / "dashboard-running.png"), full_page=True)
                if os.environ.get("FLEETFLOW_UPDATE_SCREENSHOT") == "1":  # refresh the docs' one
                    shutil.copyfile(tmp_path / "dashboard-running.png", DOCS_SCREENSHOT)
                shot = True
            if page.inner_text("#flow-state") == "COMPLETED":
                break
            time.sleep(0.2)
        seen.append(_count(page, fetched))
        page.screenshot(path=str(tmp_path / "dashboard-completed.png"), full_page=True)

        assert page.inner_text("#flow-state") == "COMPLETED", seen
        assert seen == sorted(seen), f"counts went down: {seen}"
        assert seen[-1] == n and len(set(seen)) >= 4, seen
        assert shot, f"never caught the flow run mid-way: {seen}"
        assert page.inner_text('#nodes tr[data-node="0"] td.done') == f"{n} / {n}"
        assert page.inner_text('#nodes tr[data-node="2"] td.done') == "1 / 1"
        assert page.evaluate("window.__loadedOnce") is True  # no reload happened
        assert page.evaluate("window.fleetflow.updates") >= 4
        assert run.result(timeout=10) == {"pages": n, "total": sum(2 * i for i in range(n))}

        workers = page.locator("#workers .worker")
        assert workers.count() == 2
        assert "heartbeat" in workers.first.inner_text()

        # The failed flow run, picked in the page: its failures carry tracebacks.
        page.click(f'#flows tr[data-flow="{failing.id}"]')
        page.wait_for_function(
            "id => document.querySelector('#flow-title').textContent.includes(id)",
            arg=failing.id,
        )
        assert page.inner_text("#flow-state") == "FAILED"
        first = page.locator("#failures details.failure").first
        first.locator("summary").click()
        traceback = first.locator("pre").inner_text()
        assert "Traceback (most recent call last)" in traceback
        assert "has no checksum" in traceback and "observed_flows.py" in traceback
        page.screenshot(path=str(tmp_path / "dashboard-failures.png"), full_page=True)
        assert page.evaluate("window.__loadedOnce") is True
        assert not errors, errors
    assert first_paint_s < 10, first_paint_s
