"""The dashboard's HTTP side in process: page, JSON API, server-sent events, /metrics."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from fleetflow_coordinator import dashboard as dashboard_module
from fleetflow_coordinator.dashboard import Dashboard, parse_address, start_dashboard
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.settings import Settings
from prometheus_client.parser import text_string_to_metric_families

from .drive import fail, fan_in, map_node, ok, submit


@pytest.fixture
async def served():
    runtime = Runtime(Settings())
    dashboard = Dashboard(runtime, push_interval_s=0.05)
    port = await dashboard.start("127.0.0.1:0")
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", timeout=aiohttp.ClientTimeout(total=20)
    ) as http:
        yield runtime, http
    await dashboard.stop()


def _run_some(runtime: Runtime):
    core = runtime.core
    core.register_worker("w1", {"cpu": 4.0}, frozenset({"t", "sum"}), runtime.clock())
    flow = submit(core, runtime.clock, [map_node("t", 10), fan_in("sum", 0)])
    grants = core.lease("w1", 4, runtime.clock())
    core.report("w1", [ok(g) for g in grants[:3]] + [fail(grants[3], "broken")], runtime.clock())
    return flow


async def test_page_and_static_files_are_served(served):
    _, http = served
    async with http.get("/") as page:
        assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        html = await page.text()
    assert '<script src="/static/dashboard.js">' in html
    for name in ("dashboard.js", "dashboard.css"):
        async with http.get(f"/static/{name}") as response:
            assert response.status == 200, name
            assert len(await response.read()) > 1000


async def test_json_api_describes_flow_runs_nodes_and_workers(served):
    runtime, http = served
    flow = _run_some(runtime)
    async with http.get("/api/overview") as response:
        data = await response.json()
    assert data["selected"] == flow.id
    node = data["flow"]["node_counts"][0]
    assert node["total"] == 10 and node["counts"]["completed"] == 3
    assert node["counts"]["failed"] == 1 and node["counts"]["scheduled"] == 6
    # The fan-in that can never run is counted upstream-failed, not as a failure (issue 17).
    assert [f["message"] for f in data["flow"]["failures"]] == ["broken"]
    assert data["flow"]["failures_total"] == 1 and data["flow"]["upstream_failed"] == 1
    fan_in_view = data["flow"]["node_counts"][1]
    assert fan_in_view["counts"]["upstream_failed"] == 1 and fan_in_view["total"] == 1
    assert data["workers"][0]["worker_id"] == "w1" and data["workers"][0]["running"] == 0
    async with http.get(f"/api/flow-runs/{flow.id}") as response:
        assert (await response.json())["node_counts"][1]["task_name"] == "sum"
    async with http.get("/api/flow-runs/nope") as response:
        assert response.status == 404
    async with http.get("/api/flow-runs") as response:
        assert [f["id"] for f in (await response.json())["flow_runs"]] == [flow.id]
    async with http.get("/api/workers") as response:
        assert (await response.json())["workers"][0]["capacity"] == {"cpu": 4.0}


async def test_enums_come_from_the_protocol(served):
    from fleetflow.api.v1 import common_pb2

    _, http = served
    async with http.get("/api/enums") as response:
        assert response.status == 200
        enums = await response.json()
    kinds = {int(k): v for k, v in enums["event_kinds"].items()}
    assert kinds[common_pb2.EVENT_KIND_TASK_RUN_SCHEDULED] == "TASK_RUN_SCHEDULED"
    assert len(kinds) == len(common_pb2.EventKind.keys()) - 1
    states = {int(k): v for k, v in enums["task_run_states"].items()}
    assert states[common_pb2.TASK_RUN_STATE_TIMED_OUT] == "TIMED_OUT"
    assert "COMPLETED" in enums["terminal_task_run_states"]
    assert "COMPLETED" not in enums["failed_task_run_states"]


async def test_the_http_side_is_read_only(served):
    _, http = served
    for method, path in [("POST", "/api/overview"), ("DELETE", "/api/flow-runs/x"), ("PUT", "/")]:
        async with http.request(method, path) as response:
            assert response.status == 405, (method, path)


async def test_metrics_parse_and_match_the_state(served):
    runtime, http = served
    _run_some(runtime)
    runtime.metrics.leased(4)
    runtime.metrics.reported([1, 1, 1, 1])
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("fleetflow_task_runs", (("state", "COMPLETED"),))] == 3
    assert samples[("fleetflow_task_runs", (("state", "SCHEDULED"),))] == 6
    assert samples[("fleetflow_queue_depth", (("shape", "cpu=1"), ("task", "t")))] == 6
    assert samples[("fleetflow_leases_granted_total", ())] == 4
    assert samples[("fleetflow_outcomes_reported_total", (("ack", "accepted"),))] == 4
    assert samples[("fleetflow_workers_connected", ())] == 1
    assert samples[("fleetflow_events_published_total", (("kind", "TASK_RUN_FAILED"),))] == 1
    assert ("fleetflow_worker_heartbeat_age_seconds", (("worker", "w1"),)) in samples


async def test_stream_pushes_snapshots_as_the_state_changes(served):
    runtime, http = served
    core = runtime.core
    core.register_worker("w1", {"cpu": 4.0}, frozenset({"t"}), runtime.clock())
    flow = submit(core, runtime.clock, [map_node("t", 3)])
    seen = []
    async with http.get(f"/api/stream?flow_run_id={flow.id}") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        deadline = asyncio.get_running_loop().time() + 10
        async for line in response.content:  # bounded: 10 s, or the flow run completes
            if line.startswith(b"data: "):
                data = json.loads(line[6:])
                completed = data["flow"]["node_counts"][0]["counts"]["completed"]
                seen.append(completed)
                if completed == 3:
                    break
                grants = core.lease("w1", 1, runtime.clock())
                core.report("w1", [ok(g) for g in grants], runtime.clock())
            assert asyncio.get_running_loop().time() < deadline, seen
    assert seen[0] == 0 and seen[-1] == 3 and seen == sorted(seen)
    assert len(set(seen)) == 4  # one push per change, in order


async def test_a_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        dashboard = Dashboard(Runtime(Settings()))
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port}.*--http"):
            await dashboard.start(f"127.0.0.1:{port}")
        await dashboard.stop()


def test_parse_address():
    assert parse_address("127.0.0.1:8265") == ("127.0.0.1", 8265)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("8265", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


async def test_a_busy_default_port_costs_only_the_dashboard(monkeypatch, tmp_path):
    assert Settings().http == dashboard_module.DEFAULT_HTTP
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(RuntimeError, match="cannot serve the dashboard"):
            await start_dashboard(Settings(http=address), Runtime(Settings()))
        monkeypatch.setattr(dashboard_module, "DEFAULT_HTTP", address)
        assert await start_dashboard(Settings(http=address), Runtime(Settings())) is None
    assert await start_dashboard(Settings(http="off"), Runtime(Settings())) is None
    port_file = tmp_path / "http.port"
    served = await start_dashboard(
        Settings(http="127.0.0.1:0", http_port_file=str(port_file)), Runtime(Settings())
    )
    try:
        assert int(port_file.read_text()) == served.port > 0
    finally:
        await served.stop()
