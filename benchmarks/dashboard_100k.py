"""How the dashboard behaves with a 100,000-task flow run (issue 6's note).

Starts a coordinator and two workers on 127.0.0.1, submits ``wide(n)`` (a flat
map of trivial async tasks), opens the dashboard in Debian's headless Chromium
while the run is going, and reports: time to first paint of the flow run's
counts, browser updates per second, JSON snapshot latency, and /metrics scrape
time. Every process it starts is stopped by pid at the end.

    .venv/bin/python benchmarks/dashboard_100k.py [N]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetflow import Client  # noqa: E402
from fleetflow.loader import load_module  # noqa: E402

from tests.e2e.fleet import Fleet  # noqa: E402

OBSERVED = ROOT / "tests" / "e2e" / "observed_flows.py"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def timed_get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - started, body


def main() -> None:
    from playwright.sync_api import sync_playwright

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    flows = load_module(str(OBSERVED))
    tmp = Path(tempfile.mkdtemp(prefix="fleetflow-dashboard-bench-"))
    fleet = Fleet(tmp)
    report: dict = {"task_runs": n}
    try:
        fleet.start_coordinator(lease_ttl=10.0, heartbeat=1.0)
        fleet.start_worker(module=OBSERVED)
        fleet.start_worker(module=OBSERVED)
        with Client(fleet.address) as client, sync_playwright() as playwright:
            submitted = time.monotonic()
            client.submit(flows.wide, n=n)
            report["submit_s"] = round(time.monotonic() - submitted, 2)
            context = playwright.chromium.launch_persistent_context(
                str(tmp / "profile"),
                executable_path="/usr/bin/chromium",
                headless=True,
                args=FLAGS,
                viewport={"width": 1440, "height": 900},
            )
            page = context.new_page()
            opened = time.monotonic()
            page.goto(fleet.http_url + "/")
            page.wait_for_function(
                "n => { const c = document.querySelector('#nodes tr[data-node=\"0\"] td.done');"
                " return c && c.textContent.includes(n.toLocaleString('en-US')); }",
                arg=n,
                timeout=60_000,
            )
            report["first_paint_s"] = round(time.monotonic() - opened, 3)
            api, sizes, samples = [], [], []
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                seconds, body = timed_get(f"{fleet.http_url}/api/overview")
                api.append(seconds)
                sizes.append(len(body))
                updates = page.evaluate("window.fleetflow.updates")
                done = page.inner_text('#nodes tr[data-node="0"] td.completed-count')
                samples.append((time.monotonic(), updates, int(done.replace(",", ""))))
                if json.loads(body)["flow"]["state"] != "RUNNING":
                    break
                time.sleep(1.0)
            report["run_s"] = round(time.monotonic() - submitted, 1)
            (t0, u0, _), (t1, u1, _) = samples[0], samples[-1]
            report["browser_updates_per_s"] = round((u1 - u0) / max(t1 - t0, 1e-9), 2)
            step = max(1, len(samples) // 12)
            report["browser_completed_samples"] = [s[2] for s in samples][::step]
            report["api_overview_ms_median"] = round(1000 * statistics.median(api), 1)
            report["api_overview_ms_max"] = round(1000 * max(api), 1)
            report["api_overview_bytes"] = max(sizes)
            seconds, body = timed_get(f"{fleet.http_url}/metrics")
            report["metrics_scrape_ms"] = round(1000 * seconds, 1)
            page.screenshot(path=str(tmp / "dashboard-100k.png"), full_page=True)
            report["screenshot"] = str(tmp / "dashboard-100k.png")
            context.close()
    finally:
        fleet.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
