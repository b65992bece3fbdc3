"""The dashboard's paged lists, graph, task stream, task-run page and cancel actions (issue 17).

In process, on a pure scheduler driven by hand: 2,000 task runs of which 20
fail (modest on purpose; the paging does not depend on the size).
"""

from __future__ import annotations

import aiohttp
import pytest
from fleetflow_coordinator.dashboard import Dashboard
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.settings import Settings

from .drive import fail, fan_in, map_node, ok, submit

N, EVERY = 2000, 100


async def _serve(settings: Settings, *, started: bool = False):
    runtime = Runtime(settings)
    if started:  # the cancel actions answer once the change is stored
        await runtime.open()
        runtime.start()
    dashboard = Dashboard(runtime, push_interval_s=0.05)
    port = await dashboard.start("127.0.0.1:0")
    http = aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", timeout=aiohttp.ClientTimeout(total=20)
    )
    return runtime, dashboard, http


@pytest.fixture
async def served():
    runtime, dashboard, http = await _serve(Settings())
    async with http:
        yield runtime, http
    await dashboard.stop()


def _run_with_failures(runtime: Runtime):
    core, clock = runtime.core, runtime.clock
    core.register_worker("w1", {"cpu": float(N)}, frozenset({"t", "sum"}), clock())
    flow = submit(core, clock, [map_node("t", N), fan_in("sum", 0)])
    done = 0
    for _ in range(20):  # bounded: a lease call may hand out fewer than asked
        grants = core.lease("w1", N, clock())
        outcomes = [
            fail(g, f"bad {g.task_run.index}") if g.task_run.index % EVERY == 0 else ok(g)
            for g in grants
        ]
        core.report("w1", outcomes, clock())
        done += len(grants)
        if done >= N:
            break
    assert done == N
    runtime.after_change()
    return flow


async def _get(http, path, status=200):
    async with http.get(path) as response:
        assert response.status == status, (path, await response.text())
        return await response.json()


async def test_task_run_list_pages_filters_and_searches(served):
    runtime, http = served
    flow = _run_with_failures(runtime)
    base = f"/api/flow-runs/{flow.id}/task-runs"
    seen = []
    for offset in range(0, 40, 7):  # pages of 7: exactly the 20 failures, in index order
        page = await _get(http, f"{base}?state=failed&limit=7&offset={offset}")
        assert page["total"] == 20
        seen += page["task_runs"]
    assert [r["index"] for r in seen] == list(range(0, N, EVERY))
    assert all(r["state"] == "FAILED" and r["error"] == f"bad {r['index']}" for r in seen)
    assert (
        seen[0]["error_type"] == "ValueError" and seen[0]["input"] == "x=item 0 of the literal list"
    )
    everything = await _get(http, f"{base}?limit=500&offset=1900")
    # (the sum never expanded: its upstream failed, so it has no task run to list)
    assert everything["total"] == N and len(everything["task_runs"]) == 100
    assert everything["task_runs"][-1]["index"] == N - 1
    by_task = await _get(http, f"{base}?task=t&state=completed")
    assert by_task["total"] == N - 20 and len(by_task["task_runs"]) == 100  # default page
    found = await _get(http, f"{base}?index=1234")
    assert [(r["task_name"], r["index"]) for r in found["task_runs"]] == [("t", 1234)]
    # Refused rather than cut: a limit above 500, a bad state, a bad number.
    for query in ("limit=501", "state=nope", "offset=-1", "index=x"):
        error = await _get(http, f"{base}?{query}", status=400)
        assert error["error"]
    await _get(http, "/api/flow-runs/nope/task-runs", status=404)
    runs = await _get(http, "/api/flow-runs?limit=1")
    assert runs["total"] == 1 and [f["id"] for f in runs["flow_runs"]] == [flow.id]
    await _get(http, "/api/flow-runs?limit=501", status=400)


async def test_task_run_page_graph_and_stream(served):
    runtime, http = served
    flow = _run_with_failures(runtime)
    failed = await _get(http, f"/api/flow-runs/{flow.id}/task-runs?state=failed&limit=1")
    task_run_id = failed["task_runs"][0]["task_run_id"]
    detail = await _get(http, f"/api/task-runs/{task_run_id}")
    assert detail["state"] == "FAILED" and detail["flow_run_id"] == flow.id
    (attempt,) = detail["attempts"]
    assert attempt["worker_id"] == "w1" and attempt["outcome"] == "FAILED"
    assert "Traceback" in attempt["traceback"] and detail["last_error"]["error"] == "bad 0"
    await _get(http, "/api/task-runs/999999", status=404)

    graph = await _get(http, f"/api/flow-runs/{flow.id}/graph")
    assert [n["task_name"] for n in graph["nodes"]] == ["t", "sum"]  # 2,000 items: one node
    t, total = graph["nodes"]
    assert t["map"] and t["total"] == N and t["counts"]["failed"] == 20
    assert total["counts"]["upstream_failed"] == 1 and total["depth"] == 1
    assert graph["edges"] == [{"from": 0, "to": 1, "kind": "whole"}]

    stream = await _get(http, f"/api/flow-runs/{flow.id}/task-stream")
    assert stream["workers"] == ["w1"] and stream["folded"]
    assert stream["slots"] == {"w1": N}  # lanes the page may draw: the worker's CPUs
    assert len(stream["segments"]) == N
    outcomes = {s["outcome"] for s in stream["segments"]}
    assert outcomes == {"completed", "failed"}


@pytest.fixture
async def started(tmp_path):
    runtime, dashboard, http = await _serve(
        Settings(result_store=str(tmp_path / "results")), started=True
    )
    async with http:
        yield runtime, http
    await dashboard.stop()
    await runtime.stop()


async def test_cancel_needs_the_action_header(started):
    runtime, http = started
    core, clock = runtime.core, runtime.clock
    flow = submit(core, clock, [map_node("t", 10)])
    runtime.after_change()
    async with http.post(f"/api/flow-runs/{flow.id}/cancel") as response:
        assert response.status == 403  # a cross-site form cannot send the header
    headers = {"X-Fleetflow-Action": "cancel"}
    one = flow.nodes[0].children[3].id
    async with http.post(f"/api/task-runs/{one}/cancel", headers=headers) as response:
        assert response.status == 200 and (await response.json())["cancelled"] == 1
    async with http.post(f"/api/flow-runs/{flow.id}/cancel", headers=headers) as response:
        assert response.status == 200 and (await response.json())["cancelled"] == 9
    assert flow.state.name == "CANCELLED"


async def test_cancel_needs_the_client_or_admin_role_once_tokens_exist(tmp_path):
    from fleetflow_coordinator.auth import append_entry

    auth_file = tmp_path / "auth.toml"
    append_entry(auth_file, roles=["viewer"], token="v" * 32, name="viewer")
    append_entry(auth_file, roles=["admin"], token="a" * 32, name="admin")
    settings = Settings(auth_file=str(auth_file), result_store=str(tmp_path / "results"))
    runtime, dashboard, http = await _serve(settings, started=True)
    try:
        async with http:
            flow = submit(runtime.core, runtime.clock, [map_node("t", 3)])
            path = f"/api/flow-runs/{flow.id}/cancel"
            action = {"X-Fleetflow-Action": "cancel"}
            async with http.post(path, headers=action) as response:
                assert response.status == 401
            viewer = {**action, "Authorization": "Bearer " + "v" * 32}
            async with http.post(path, headers=viewer) as response:
                assert response.status == 403 and "client or admin" in await response.text()
            admin = {**action, "Authorization": "Bearer " + "a" * 32}
            async with http.post(path, headers=admin) as response:
                assert response.status == 200
            assert flow.state.name == "CANCELLED"
    finally:
        await dashboard.stop()
        await runtime.stop()
