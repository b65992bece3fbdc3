# ruff: noqa: E501 - xfail reasons are one-line bug descriptions
"""A worker's hostile heartbeat values reach the dashboard every browser reads."""

from __future__ import annotations

import json
import math

import aiohttp
from fleetflow_coordinator.dashboard import Dashboard
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.settings import Settings


def _strict(text: str):
    """Parse like a browser's JSON.parse: NaN and Infinity are not JSON."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not valid JSON (JSON.parse in the browser fails)")

    return json.loads(text, parse_constant=refuse)


async def test_nan_heartbeat_from_one_worker_keeps_the_dashboard_valid_json():
    runtime = Runtime(Settings(http="off"))
    dashboard = Dashboard(runtime, push_interval_s=0.05)
    port = await dashboard.start("127.0.0.1:0")
    try:
        core = runtime.core
        core.register_worker("good", {"cpu": 4.0}, frozenset({"t"}), runtime.clock())
        core.register_worker("bad", {"cpu": 4.0}, frozenset({"t"}), runtime.clock())
        # Heartbeat doubles are not validated: a broken psutil reading or a hostile worker.
        core.heartbeat("bad", [], runtime.clock(), cpu_percent=math.nan, memory_available=-1.0)
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{port}", timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            for path in ("/api/overview", "/api/workers"):
                async with http.get(path) as response:
                    _strict(await response.text())
    finally:
        await dashboard.stop()
