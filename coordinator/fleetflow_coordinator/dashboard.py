"""The coordinator's HTTP port: the dashboard page, its JSON API, live updates, ``/metrics``.

An aiohttp application on the coordinator's own event loop, next to the gRPC
server, so every handler reads the core between two awaits and sees a
consistent state without locks. It only reads the core, except for the two
cancel actions of ``dashboard_api``.

Routes:

* ``/`` and ``/static/*``: one HTML page and one vanilla-JS file (no build step);
* ``/api/overview?flow_run_id=ID``: what one dashboard update shows;
* ``/api/flow-runs/{id}``, ``/api/workers``: the parts;
* paged lists, the graph, the task stream, task-run pages and the cancel
  actions: see :mod:`fleetflow_coordinator.dashboard_api`;
* ``/api/demand[?pool=NAME]``: the autoscaling signal (``autoscale.py``);
* ``/api/stream?flow_run_id=ID``: the overview as server-sent events, pushed
  when the state changed, at most every ``push_interval_s`` and at least
  once a second;
* ``/metrics``: Prometheus text format.

Why server-sent events rather than a websocket: updates flow one way, SSE is
plain HTTP (proxies, curl and ``EventSource`` handle it, and it reconnects by
itself), and a snapshot replaces the last one, so a lost message costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from fleetflow.api.v1 import common_pb2

from fleetflow_coordinator import dashboard_api, http_guard
from fleetflow_coordinator.autoscale import demand_json
from fleetflow_coordinator.core.model import FAILED_TASK_STATES, TERMINAL_TASK_STATES
from fleetflow_coordinator.metrics import CONTENT_TYPE
from fleetflow_coordinator.observe import (
    FOLD_BUDGET,
    AttemptLog,
    Observer,
    flow_detail,
    worker_view,
)
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.settings import Settings

__all__ = ["Dashboard", "parse_address", "start_dashboard"]

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Where the dashboard listens unless told otherwise.
DEFAULT_HTTP = "127.0.0.1:8265"
#: Shortest time between two pushes on one stream, seconds.
PUSH_INTERVAL_S = 0.25
#: A stream is pushed at least this often even when nothing changed (ages, durations).
REFRESH_S = 1.0
#: How long a built snapshot is reused by other streams of the same view, seconds.
_CACHE_S = 0.1

_NO_STORE = {"Cache-Control": "no-store"}


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:80`` for IPv6).

    Raises:
        ValueError: no port, or the port is not a number in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class Dashboard:
    """Serves the dashboard, its API and ``/metrics`` for one runtime.

    Args:
        runtime: The coordinator's runtime (read-only use, plus its metrics).
        push_interval_s: Shortest time between two pushes on a stream, seconds.
    """

    def __init__(self, runtime: Runtime, *, push_interval_s: float = PUSH_INTERVAL_S) -> None:
        self.rt = runtime
        self.push_interval_s = push_interval_s
        self.observer = Observer(
            lambda: runtime.core,
            runtime.clock,
            sink=AttemptLog(runtime.metrics),
            usage=runtime.usage,
        )
        runtime.observer = self.observer  # GetFlowRunStats reads the same fold
        runtime.metrics.bind_state(runtime)
        self.app = web.Application()
        http_guard.install(self.app, runtime.settings)  # Host check, token, CSP headers
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/api/overview", self._overview),
                web.get("/api/flow-runs/{flow_run_id}", self._flow_run),
                web.get("/api/workers", self._workers),
                web.get("/api/enums", self._enums),
                web.get("/api/demand", self._demand),
                web.get("/api/stream", self._stream),
                web.get("/metrics", self._metrics),
                web.static("/static", STATIC_DIR),
            ]
        )
        dashboard_api.add_routes(self.app, runtime, self.observer)
        self._runner: web.AppRunner | None = None
        self._folder: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        #: {flow_run_id or "": (fingerprint, monotonic time, encoded snapshot)}
        self._cache: dict[str, tuple[tuple, float, bytes]] = {}
        self.port = 0

    # -------------------------------------------------------------- lifecycle

    async def start(self, address: str) -> int:
        """Bind ``address`` (``HOST:PORT``; port 0 picks one) and serve; return the port.

        Raises:
            RuntimeError: the address is invalid or cannot be bound.
        """
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise RuntimeError(f"--http {exc}") from None
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, host, port, ssl_context=http_guard.ssl_context(self.rt.settings)
            )
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise RuntimeError(
                f"cannot serve the dashboard on {address}: {exc.strerror or exc}; "
                "pick another --http HOST:PORT (port 0 picks a free one) or --http off"
            ) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        # Supervised like every background loop: a fold that raises stops the
        # process (logged with its traceback) instead of leaving views frozen.
        self._folder = self.rt.spawn("dashboard_fold", self._fold_loop())
        return self.port

    async def stop(self) -> None:
        """End live streams and stop serving."""
        self._closing.set()
        if self._folder is not None:
            self._folder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._folder
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _fold_loop(self) -> None:
        """Fold new events continuously, in bounded slices, so reads stay cheap."""
        observer = self.observer
        while True:
            folded = observer.catch_up()
            await asyncio.sleep(0 if folded >= FOLD_BUDGET else self.push_interval_s)

    # ------------------------------------------------------------- snapshots

    def _fingerprint(self, flow_run_id: str | None) -> tuple:
        core = self.rt.core
        events = 0
        for flow in core.flows.values():
            events += len(flow.events)
        running = sum(len(w.running) for w in core.workers.values())
        return (flow_run_id, len(core.flows), events, len(core.workers), running)

    def snapshot(self, flow_run_id: str | None) -> tuple[tuple, bytes]:
        """The encoded overview for a view and its fingerprint, shared by concurrent streams."""
        key = flow_run_id or ""
        fingerprint = self._fingerprint(flow_run_id)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] == fingerprint and now - cached[1] < _CACHE_S:
            return fingerprint, cached[2]
        data = self.observer.overview(flow_run_id)
        data["server_time"] = self.rt.clock()
        body = json.dumps(data, separators=(",", ":")).encode()
        self._cache[key] = (fingerprint, now, body)
        if len(self._cache) > 64:
            self._cache.pop(next(iter(self._cache)))
        return fingerprint, body

    # --------------------------------------------------------------- handlers

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_NO_STORE)

    def _json(self, data: Any, status: int = 200) -> web.Response:
        return web.json_response(data, status=status, headers=_NO_STORE, dumps=_compact)

    async def _overview(self, request: web.Request) -> web.Response:
        self.observer.catch_up()
        _, body = self.snapshot(request.query.get("flow_run_id") or None)
        return web.Response(body=body, content_type="application/json", headers=_NO_STORE)

    async def _flow_run(self, request: web.Request) -> web.Response:
        flow_run_id = request.match_info["flow_run_id"]
        self.observer.catch_up()
        flow = self.rt.core.flows.get(flow_run_id)
        if flow is None:
            return self._json({"error": f"no flow run {flow_run_id!r}"}, status=404)
        detail = flow_detail(
            flow,
            self.observer.digest(flow.id),
            self.rt.clock(),
            self.rt.core.workers.values(),
            usage=self.rt.usage,
        )
        return self._json(detail)

    async def _enums(self, request: web.Request) -> web.Response:
        return self._json(protocol_enums())

    async def _workers(self, request: web.Request) -> web.Response:
        now = self.rt.clock()
        gpus = self.rt.usage.worker_gpus.of
        workers = [worker_view(w, now, gpus(w.worker_id)) for w in self.rt.core.workers.values()]
        return self._json({"workers": workers})

    async def _demand(self, request: web.Request) -> web.Response:
        """The autoscaling signal per pool (``?pool=NAME`` for one); see autoscale.py."""
        return self._json(demand_json(self.rt.core, request.query.get("pool")))

    async def _metrics(self, request: web.Request) -> web.Response:
        self.observer.catch_up(budget=10 * FOLD_BUDGET)
        return web.Response(
            body=self.rt.metrics.exposition(),
            headers={"Content-Type": CONTENT_TYPE},
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        flow_run_id = request.query.get("flow_run_id") or None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        last_fingerprint: tuple | None = None
        last_sent = 0.0
        try:
            await response.write(b"retry: 1000\n\n")
            while not self._closing.is_set():
                now = time.monotonic()
                fingerprint = self._fingerprint(flow_run_id)
                if fingerprint != last_fingerprint or now - last_sent >= REFRESH_S:
                    fingerprint, body = self.snapshot(flow_run_id)
                    await response.write(b"event: snapshot\ndata: " + body + b"\n\n")
                    last_fingerprint, last_sent = fingerprint, now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.push_interval_s)
        except ConnectionError:
            pass  # the browser went away
        return response


async def start_dashboard(settings: Settings, runtime: Runtime) -> Dashboard | None:
    """Serve the dashboard on ``settings.http`` unless it is ``""``/``"off"``.

    Writes the bound port to ``settings.http_port_file`` when set. When the
    address is the default one (:data:`DEFAULT_HTTP`) and already taken, e.g.
    by a second coordinator on the same machine, the coordinator runs without
    a dashboard and logs why; any other address that cannot be bound is an error.

    Raises:
        RuntimeError: an address given explicitly is invalid or cannot be bound.
    """
    if settings.http.strip().lower() in ("", "off", "none"):
        return None
    dashboard = Dashboard(runtime)
    try:
        port = await dashboard.start(settings.http)
    except RuntimeError as exc:
        if settings.http != DEFAULT_HTTP:
            raise
        log.warning("dashboard_unavailable", reason=str(exc))
        return None
    host = parse_address(settings.http)[0]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if http_guard.ssl_context(settings) is not None else "http"
    log.info("dashboard_started", url=f"{scheme}://{shown}:{port}/")
    if settings.http_port_file:
        target = Path(settings.http_port_file)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, target)
    return dashboard


def protocol_enums() -> dict[str, Any]:
    """The protocol's state and event numbers and names, for the page (``/api/enums``).

    Taken from the generated protocol code (``fleetflow.api.v1.common_pb2``), so
    the page keeps no copy of them; the groups come from the core's tables.

    Returns:
        ``{"task_run_states" | "flow_run_states" | "event_kinds": {number: name}}``
        (names without the enum's prefix) plus ``terminal_task_run_states`` and
        ``failed_task_run_states``, lists of names.
    """

    def names(enum: Any, prefix: str) -> dict[int, str]:
        return {v.number: v.name.removeprefix(prefix) for v in enum.DESCRIPTOR.values if v.number}

    return {
        "task_run_states": names(common_pb2.TaskRunState, "TASK_RUN_STATE_"),
        "flow_run_states": names(common_pb2.FlowRunState, "FLOW_RUN_STATE_"),
        "event_kinds": names(common_pb2.EventKind, "EVENT_KIND_"),
        "terminal_task_run_states": sorted(s.name for s in TERMINAL_TASK_STATES),
        "failed_task_run_states": sorted(s.name for s in FAILED_TASK_STATES),
    }
