"""The dashboard's paged and per-item JSON views, and its two actions (cancel).

Routes (added to the dashboard's application by :func:`add_routes`):

* ``GET /api/flow-runs?limit=&offset=``: flow runs, newest first, one page;
* ``GET /api/flow-runs/{id}/task-runs?state=&task=&index=&limit=&offset=``: a
  flow run's task runs in (node, index) order, filtered, one page;
* ``GET /api/flow-runs/{id}/graph``: the flow graph, one node per task (a
  100,000-item map is one node with its counts), and its edges;
* ``GET /api/flow-runs/{id}/task-stream``: attempts per worker over time;
* ``GET /api/task-runs/{id}``: one task run with attempts, error, traceback
  and the last log lines;
* ``POST /api/flow-runs/{id}/cancel`` and ``POST /api/task-runs/{id}/cancel``.

Every ``limit`` is at most :data:`MAX_PAGE` (a larger one is refused with 400,
not cut); a bad number or state is 400 too. The cancel actions need the
``client`` or ``admin`` role once authentication is configured (an auth file),
and a request header a cross-site form cannot send (``X-Fleetflow-Action``),
so another web page cannot cancel through a browser that can reach the port.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from fleetflow_coordinator.auth import AuthFile
from fleetflow_coordinator.core import TaskRunState
from fleetflow_coordinator.core.model import FlowRun, TaskRun
from fleetflow_coordinator.core.queries import attempt_history, input_summary, select_task_runs
from fleetflow_coordinator.errors import Unauthenticated
from fleetflow_coordinator.observe import Observer
from fleetflow_coordinator.observe_views import flow_summary, node_view
from fleetflow_coordinator.runtime import Runtime

__all__ = ["add_routes", "MAX_PAGE", "DEFAULT_PAGE", "ACTION_HEADER"]

#: Most rows one page holds (flow runs, task runs).
MAX_PAGE = 500
#: Rows per page when the request gives no limit.
DEFAULT_PAGE = 100
#: The header the page sends with an action; a cross-site form cannot set it.
ACTION_HEADER = "X-Fleetflow-Action"
#: Roles that may cancel from the page once authentication is configured.
ACTION_ROLES = frozenset({"client", "admin"})
#: Attempts of one task stream, at most (the newest).
STREAM_LIMIT = 5000

_STATES = {s.name.lower(): s for s in TaskRunState}
_NO_STORE = {"Cache-Control": "no-store"}


class BadRequest(ValueError):
    """A query parameter is out of range or unknown (answered with 400)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_NO_STORE)


def _int(request: web.Request, name: str, default: int, high: int | None = None) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name}: expected a whole number >= 0, got {raw[:40]!r}")
    value = int(raw)
    if high is not None and value > high:
        raise BadRequest(f"{name}: {value} is over the maximum of {high}")
    return value


def page_of(request: web.Request) -> tuple[int, int]:
    """``(offset, limit)`` of a request; a limit of 0 or none means :data:`DEFAULT_PAGE`.

    Raises:
        BadRequest: not whole numbers, or a limit above :data:`MAX_PAGE`.
    """
    offset = _int(request, "offset", 0)
    limit = _int(request, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    return offset, limit


def states_of(request: web.Request) -> frozenset[int]:
    """``?state=failed,timed_out`` as TaskRunState values (empty: every state).

    Raises:
        BadRequest: a name that is no task run state.
    """
    names = [n.strip().lower() for n in request.query.get("state", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in _STATES]
    if unknown:
        raise BadRequest(f"state: unknown {unknown}; known: {sorted(_STATES)}")
    return frozenset(int(_STATES[n]) for n in names)


def task_run_row(tr: TaskRun) -> dict[str, Any]:
    """One row of the task-run list."""
    error = tr.error
    summary, _ = input_summary(tr)
    return {
        "task_run_id": tr.id,
        "node": tr.node.index,
        "task_name": tr.node.task_name,
        "index": tr.index,
        "state": tr.state.name,
        "attempt": tr.attempt,
        "worker_id": tr.worker_id or "",
        "error_type": (getattr(error, "type", "") or "").removeprefix("builtins."),
        "error": ((getattr(error, "message", "") or "").strip().splitlines() or [""])[0][:500],
        "input": summary,
    }


def task_run_detail(tr: TaskRun) -> dict[str, Any]:
    """A task run's page: where it is, its attempts, error, traceback and last log lines."""
    attempts = []
    for view in attempt_history(tr):
        error = view.error
        attempts.append(
            {
                "attempt": view.attempt,
                "worker_id": view.worker_id,
                "started_at": view.started_at or None,
                "ended_at": view.ended_at or None,
                "duration_s": (
                    view.ended_at - view.started_at if view.started_at and view.ended_at else None
                ),
                "outcome": view.outcome,
                "infrastructure": view.infrastructure,
                "message": view.message,
                "error_type": getattr(error, "type", "") or "",
                "error": getattr(error, "message", "") or "",
                "traceback": getattr(error, "traceback", "") or "",
                "log_tail": list(getattr(error, "log_tail", ()) or ()),
            }
        )
    last = next((a for a in reversed(attempts) if a["error"] or a["traceback"]), None)
    return {
        **task_run_row(tr),
        "flow_run_id": tr.flow.id,
        "flow_name": tr.flow.name,
        "resources": dict(tr.node.resources),
        "attempts": attempts,
        "last_error": last,
    }


def graph_view(flow: FlowRun) -> dict[str, Any]:
    """Nodes (one per task, with counts) and edges ``{from, to, kind}`` of a flow run."""
    edges = []
    for node in flow.nodes:
        for upstream in node.whole_deps:
            edges.append({"from": upstream, "to": node.index, "kind": "whole"})
        for upstream in node.item_deps:
            edges.append({"from": upstream, "to": node.index, "kind": "item"})
    nodes = [node_view(n, flow) for n in flow.nodes]
    depth = [0] * len(flow.nodes)
    for node in flow.nodes:  # nodes come in topological order
        for upstream in (*node.whole_deps, *node.item_deps):
            depth[node.index] = max(depth[node.index], depth[upstream] + 1)
    for view, level in zip(nodes, depth, strict=True):
        view["depth"] = level
    return {"flow_run_id": flow.id, "nodes": nodes, "edges": edges}


def task_stream(
    flow: FlowRun, observer: Observer, now: float, workers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Attempts per worker over time: finished ones (the newest) and those running now.

    ``slots`` gives each connected worker's CPUs (rounded up): the page draws at
    most that many lanes per worker, so members of a lease batch, which all
    count from their lease but run one after another, are drawn one after
    another too.
    """
    digest = observer.digest(flow.id)
    segments = [
        {
            "worker_id": worker,
            "task_name": task,
            "start": start,
            "end": end,
            "outcome": outcome,
            "task_run_id": task_run_id,
            "index": index,
        }
        for worker, task, start, end, outcome, task_run_id, index in list(digest.stream)[
            -STREAM_LIMIT:
        ]
    ]
    for task_run_id, run in digest.running.items():
        segments.append(
            {
                "worker_id": run.worker_id,
                "task_name": run.task_name,
                "start": run.started_at,
                "end": now,
                "outcome": "running",
                "task_run_id": task_run_id,
                "index": run.index,
            }
        )
    slots = {
        worker_id: max(1, math.ceil(record.capacity.get("cpu", 1.0)))
        for worker_id, record in (workers or {}).items()
    }
    workers_seen = sorted({s["worker_id"] for s in segments})
    start = min((s["start"] for s in segments), default=flow.created_at)
    end = max((s["end"] for s in segments), default=now)
    return {
        "flow_run_id": flow.id,
        "start": start,
        "end": end,
        "workers": workers_seen,
        "slots": {w: slots[w] for w in workers_seen if w in slots},
        "tasks": sorted({s["task_name"] for s in segments}),
        "segments": segments,
        "folded": digest.cursor >= len(flow.events),
    }


class _Views:
    def __init__(self, runtime: Runtime, observer: Observer, auth: AuthFile | None) -> None:
        self.rt = runtime
        self.observer = observer
        self.auth = auth

    def _flow(self, request: web.Request) -> FlowRun:
        flow_run_id = request.match_info["flow_run_id"]
        flow = self.rt.core.flows.get(flow_run_id)
        if flow is None:
            raise web.HTTPNotFound(
                text=f'{{"error": "no flow run {flow_run_id[:100]!r}"}}',
                content_type="application/json",
            )
        return flow

    def _task_run(self, request: web.Request) -> TaskRun:
        raw = request.match_info["task_run_id"]
        tr = self.rt.core.task_runs.get(int(raw)) if raw.isdigit() else None
        if tr is None:
            raise web.HTTPNotFound(
                text=f'{{"error": "no task run {raw[:40]!r}"}}', content_type="application/json"
            )
        return tr

    async def flow_runs(self, request: web.Request) -> web.Response:
        offset, limit = page_of(request)
        flows = self.rt.core.flows
        newest = list(reversed(flows.values()))[offset : offset + limit]
        now = self.rt.clock()
        return _json(
            {
                "total": len(flows),
                "offset": offset,
                "limit": limit,
                "flow_runs": [flow_summary(f, now) for f in newest],
            }
        )

    async def task_runs(self, request: web.Request) -> web.Response:
        flow = self._flow(request)
        offset, limit = page_of(request)
        index_raw = request.query.get("index", "").strip()
        if index_raw and not index_raw.isdigit():
            raise BadRequest(f"index: expected a whole number >= 0, got {index_raw[:40]!r}")
        total, page = select_task_runs(
            flow,
            states=states_of(request),
            task_name=request.query.get("task", ""),
            index=int(index_raw) if index_raw else None,
            offset=offset,
            limit=limit,
        )
        return _json(
            {
                "flow_run_id": flow.id,
                "total": total,
                "offset": offset,
                "limit": limit,
                "tasks": [n.task_name for n in flow.nodes],
                "task_runs": [task_run_row(tr) for tr in page],
            }
        )

    async def task_run(self, request: web.Request) -> web.Response:
        return _json(task_run_detail(self._task_run(request)))

    async def graph(self, request: web.Request) -> web.Response:
        return _json(graph_view(self._flow(request)))

    async def stream(self, request: web.Request) -> web.Response:
        flow = self._flow(request)
        self.observer.fold_flow(flow.id)
        return _json(task_stream(flow, self.observer, self.rt.clock(), self.rt.core.workers))

    def _check_action(self, request: web.Request) -> None:
        if request.headers.get(ACTION_HEADER) != "cancel":
            raise web.HTTPForbidden(text=f"send {ACTION_HEADER}: cancel (the page does)\n")
        if self.auth is None:
            return  # no authentication configured: loopback or --insecure
        try:
            principal = self.auth.table.http_principal(request.headers.get("Authorization"))
        except Unauthenticated as exc:
            raise web.HTTPUnauthorized(
                text=f"{exc}\n",
                headers={"WWW-Authenticate": 'Basic realm="fleetflow", charset="UTF-8"'},
            ) from None
        if not principal.may(ACTION_ROLES):
            raise web.HTTPForbidden(
                text=f"{principal.name} may not cancel: it needs the client or admin role\n"
            )

    async def cancel_flow(self, request: web.Request) -> web.Response:
        self._check_action(request)
        flow = self._flow(request)
        cancelled = self.rt.core.cancel_flow(flow.id, self.rt.clock())
        self.rt.after_change()
        await self.rt.durable()
        return _json({"flow_run_id": flow.id, "cancelled": cancelled or 0})

    async def cancel_task_run(self, request: web.Request) -> web.Response:
        self._check_action(request)
        tr = self._task_run(request)
        cancelled = self.rt.core.cancel_task_run(tr.id, self.rt.clock())
        self.rt.after_change()
        await self.rt.durable()
        return _json({"task_run_id": tr.id, "cancelled": cancelled or 0})


@web.middleware
async def _bad_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json({"error": str(exc)}, status=400)


def add_routes(app: web.Application, runtime: Runtime, observer: Observer) -> None:
    """Add this module's routes (and its 400 answers for bad parameters) to ``app``."""
    settings = runtime.settings
    auth = AuthFile(settings.auth_file) if settings.auth_file else None
    views = _Views(runtime, observer, auth)
    app.middlewares.append(_bad_requests)
    app.add_routes(
        [
            web.get("/api/flow-runs", views.flow_runs),
            web.get("/api/flow-runs/{flow_run_id}/task-runs", views.task_runs),
            web.get("/api/flow-runs/{flow_run_id}/graph", views.graph),
            web.get("/api/flow-runs/{flow_run_id}/task-stream", views.stream),
            web.get("/api/task-runs/{task_run_id}", views.task_run),
            web.post("/api/flow-runs/{flow_run_id}/cancel", views.cancel_flow),
            web.post("/api/task-runs/{task_run_id}/cancel", views.cancel_task_run),
        ]
    )
