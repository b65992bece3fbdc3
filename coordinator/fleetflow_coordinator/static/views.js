// fleetflow dashboard, second half: the flow run's graph, its task stream per
// worker (drawn with the vendored Chart.js), the paged task-run list with its
// filters, one task run's page, and the cancel buttons. These read the paged
// JSON endpoints (fleetflow_coordinator/dashboard_api.py) on demand; the live
// snapshot stream of dashboard.js tells them when the selected flow run moved.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const PAGE = 50;                 // task runs per page (the server allows up to 500)
  const REFRESH_MS = 2000;         // while a flow run runs: graph, stream and list at most this often
  const COLORS = {
    failed: "#d64545", retrying: "#e8944a", lost: "#8a8f98", running: "#3b7de0",
  };
  // Completed attempts are coloured by task (a colour-blind-safe set, as Dask's stream does).
  const PALETTE = ["#2f9e5b", "#4c72b0", "#8172b3", "#64b5cd", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"];
  const views = {
    flowId: null,
    state: null,
    events: -1,
    lastFetch: 0,
    offset: 0,
    total: 0,
    chart: null,
    taskRunId: null,
    graphEdges: null,
    renders: { graph: 0, stream: 0, list: 0 },
  };
  window.fleetflowViews = views;

  function esc(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => (
      { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function num(n) {
    return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US");
  }

  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
    return `${Math.floor(m / 60)}h ${m % 60}m`;
  }

  function clock(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleTimeString("en-GB", { hour12: false }) : "";
  }

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: ${response.status}`);
    return response.json();
  }

  async function post(path) {
    const response = await fetch(path, { method: "POST", headers: { "X-Fleetflow-Action": "cancel" } });
    const text = await response.text();
    if (!response.ok) throw new Error(`${response.status}: ${text}`);
    return JSON.parse(text);
  }

  // ------------------------------------------------------------------ graph

  function renderGraph(nodes, edges) {
    const W = 190, H = 46, GX = 60, GY = 18;
    const columns = [];
    for (const n of nodes) {
      const d = n.depth || 0;
      (columns[d] = columns[d] || []).push(n);
    }
    const pos = {};
    columns.forEach((col, d) => col.forEach((n, i) => { pos[n.node] = { x: 10 + d * (W + GX), y: 10 + i * (H + GY) }; }));
    const width = 20 + columns.length * (W + GX) - GX;
    const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
    const lines = edges.map((e) => {
      const a = pos[e.from], b = pos[e.to];
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      return `<path class="edge ${e.kind}" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}"/>`;
    });
    const boxes = nodes.map((n) => {
      const c = n.counts, p = pos[n.node];
      const failed = c.failed + c.timed_out;
      const total = n.total === null ? (n.ended_unexpanded ? n.ended_unexpanded.replace("_", " ") : "?") : num(n.total);
      const parts = [`${num(n.finished)}/${total}`];
      if (c.running) parts.push(`${num(c.running)} running`);
      if (failed) parts.push(`${num(failed)} failed`);
      if (c.upstream_failed) parts.push(`${num(c.upstream_failed)} upstream failed`);
      if (c.cancelled) parts.push(`${num(c.cancelled)} cancelled`);
      const cls = failed || c.upstream_failed ? "failed" : (n.terminal ? "done" : "");
      const done = n.total ? Math.min(1, n.finished / n.total) : 0;
      return `<g class="gnode ${cls}" data-node="${n.node}" transform="translate(${p.x},${p.y})">
        <rect width="${W}" height="${H}"></rect>
        <rect x="0" y="${H - 4}" width="${(W * done).toFixed(1)}" height="4" style="fill:${failed ? COLORS.failed : COLORS.completed};stroke:none"></rect>
        <text x="8" y="17">${esc(n.task_name)}${n.map ? " (map)" : ""}</text>
        <text class="counts" x="8" y="33">${esc(parts.join(" · "))}</text>
      </g>`;
    });
    $("#graph").innerHTML = `<svg width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
      `${lines.join("")}${boxes.join("")}</svg>`;
    views.renders.graph += 1;
  }

  async function refreshGraph(flow) {
    if (views.graphEdges === null || views.graphEdges.flow !== flow.id) {
      const graph = await getJson(`/api/flow-runs/${encodeURIComponent(flow.id)}/graph`);
      views.graphEdges = { flow: flow.id, edges: graph.edges, depth: graph.nodes.map((n) => n.depth) };
    }
    const nodes = flow.node_counts.map((n, i) => ({ ...n, depth: views.graphEdges.depth[i] }));
    renderGraph(nodes, views.graphEdges.edges);
  }

  // ----------------------------------------------------------- task stream

  async function refreshStream(flow) {
    const data = await getJson(`/api/flow-runs/${encodeURIComponent(flow.id)}/task-stream`);
    const empty = data.segments.length === 0;
    $("#stream-empty").hidden = !empty;
    $(".stream-box").hidden = empty;
    if (empty) return;
    const t0 = data.start;
    // Attempts that overlap on one worker (it runs several at once) get rows
    // of their own: "worker · 2" is its second lane, as in Dask's task stream.
    const rows = [];
    const byKey = {};
    const byWorker = {};
    for (const s of data.segments) (byWorker[s.worker_id] = byWorker[s.worker_id] || []).push(s);
    // At most one lane per CPU of the worker (when it is still connected): members of a
    // lease batch all count from their lease but run one after another, so an attempt
    // that finds no free lane starts when the earliest lane frees.
    for (const worker of data.workers) {
      const lanes = [];
      const most = (data.slots || {})[worker] || Infinity;
      const segments = byWorker[worker].sort((a, b) => a.end - b.end);
      for (const s of segments) {
        let lane = lanes.findIndex((end) => end <= s.start + 1e-6);
        if (lane < 0 && lanes.length < most) { lane = lanes.length; lanes.push(0); }
        if (lane < 0) {
          lane = lanes.indexOf(Math.min(...lanes));
          s.start = Math.min(Math.max(s.start, lanes[lane]), s.end);
        }
        lanes[lane] = s.end;
        s.row = `${worker} · ${lane + 1}`;
      }
      for (let i = 0; i < lanes.length; i += 1) rows.push(`${worker} · ${i + 1}`);
    }
    for (const s of data.segments) {
      // Completed attempts take their task's colour; the other outcomes their own.
      const key = s.outcome === "completed" ? s.task_name : s.outcome;
      (byKey[key] = byKey[key] || []).push({
        x: [s.start - t0, Math.max(s.end - t0, s.start - t0 + 0.002)],
        y: s.row,
        label: `${s.task_name}[${s.index}] · task run ${s.task_run_id} · ${s.outcome}`,
      });
    }
    const tasks = data.tasks;
    const datasets = Object.keys(byKey).sort().map((key) => ({
      label: COLORS[key] ? key : `${key} (completed)`,
      data: byKey[key],
      backgroundColor: COLORS[key] || PALETTE[tasks.indexOf(key) % PALETTE.length],
      borderColor: "#ffffff",
      borderWidth: 1,
      borderSkipped: false,
      barPercentage: 0.85,
      categoryPercentage: 1.0,
      grouped: false,
    }));
    const height = Math.max(140, 70 + 22 * rows.length);
    $(".stream-box").style.height = `${height}px`;
    const config = {
      type: "bar",
      data: { labels: rows, datasets },
      options: {
        indexAxis: "y",
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        parsing: { xAxisKey: "x", yAxisKey: "y" },
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "seconds since the first attempt started" } },
          y: { type: "category", labels: rows, title: { display: true, text: "worker · lane" } },
        },
        plugins: {
          legend: { position: "top", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (ctx) => `${ctx.raw.label}: ${duration(ctx.raw.x[1] - ctx.raw.x[0])}` } },
        },
      },
    };
    if (views.chart) views.chart.destroy();
    views.chart = new window.Chart($("#task-stream"), config);
    $("#stream-meta").textContent = `${num(data.segments.length)} attempts on ${data.workers.length} workers` +
      ` over ${duration(data.end - data.start)} (newest 5,000 kept)`;
    views.renders.stream += 1;
  }

  // --------------------------------------------------------- task-run list

  function listQuery() {
    const params = new URLSearchParams({ limit: String(PAGE), offset: String(views.offset) });
    const st = $("#tr-state").value;
    const task = $("#tr-task").value;
    const index = $("#tr-index").value.trim();
    if (st) params.set("state", st);
    if (task) params.set("task", task);
    if (index) params.set("index", index);
    return params.toString();
  }

  async function refreshList() {
    if (!views.flowId) return;
    const data = await getJson(`/api/flow-runs/${encodeURIComponent(views.flowId)}/task-runs?${listQuery()}`);
    views.total = data.total;
    const select = $("#tr-task");
    const tasks = [...new Set(data.tasks)];
    if (select.dataset.flow !== views.flowId) {
      select.innerHTML = `<option value="">any</option>` + tasks.map((t) => `<option>${esc(t)}</option>`).join("");
      select.dataset.flow = views.flowId;
    }
    $("#task-runs tbody").innerHTML = data.task_runs.map((r) => `<tr data-task-run="${r.task_run_id}">
      <td class="num id">${r.task_run_id}</td>
      <td>${esc(r.task_name)}[${r.index}]</td>
      <td><span class="state ${esc(r.state)}">${esc(r.state)}</span></td>
      <td class="num">${r.attempt}</td>
      <td class="input">${esc(r.input)}</td>
      <td class="err">${r.error_type ? `${esc(r.error_type)}: ` : ""}${esc(r.error)}</td>
    </tr>`).join("");
    const first = data.task_runs.length ? data.offset + 1 : 0;
    $("#tr-range").textContent = `(${num(first)}–${num(data.offset + data.task_runs.length)} of ${num(data.total)})`;
    $("#tr-empty").hidden = data.task_runs.length > 0;
    $("#tr-prev").disabled = data.offset === 0;
    $("#tr-next").disabled = data.offset + data.task_runs.length >= data.total;
    views.renders.list += 1;
  }

  // --------------------------------------------------------- task-run page

  async function showTaskRun(taskRunId) {
    views.taskRunId = taskRunId;
    const t = await getJson(`/api/task-runs/${taskRunId}`);
    $("#task-run-panel").hidden = false;
    $("#tr-title").textContent = `task run ${t.task_run_id} · ${t.task_name}[${t.index}]`;
    const badge = $("#tr-state-badge");
    badge.textContent = t.state;
    badge.className = `state ${t.state}`;
    $("#tr-meta").textContent = `flow run ${t.flow_run_id} (${t.flow_name}), node ${t.node}` +
      (t.input ? `, ${t.input}` : "");
    $("#tr-cancel").hidden = !["PENDING", "SCHEDULED", "RUNNING", "AWAITING_RETRY"].includes(t.state);
    $("#attempts tbody").innerHTML = t.attempts.map((a) => `<tr>
      <td class="num">${a.attempt}</td><td class="id">${esc(a.worker_id || "-")}</td>
      <td>${clock(a.started_at)}</td><td>${clock(a.ended_at)}</td>
      <td class="num">${duration(a.duration_s)}</td>
      <td>${esc(a.outcome)}${a.infrastructure ? " (infrastructure)" : ""}</td>
      <td>${a.error_type ? `${esc(a.error_type)}: ` : ""}${esc(a.error || a.message)}</td>
    </tr>`).join("");
    const e = t.last_error;
    $("#tr-error").innerHTML = e ? `<h3>Error of attempt ${e.attempt}</h3>` +
      `<div class="failure"><b>${esc(e.error_type)}</b>: ${esc(e.error)}</div>` +
      (e.traceback ? `<h3>Traceback</h3><pre class="traceback">${esc(e.traceback)}</pre>` : "") +
      (e.log_tail.length ? `<h3>Last log lines</h3><pre class="log-tail">${esc(e.log_tail.join("\n"))}</pre>` : "")
      : "";
    $("#task-run-panel").scrollIntoView({ block: "nearest" });
  }

  // ----------------------------------------------------------------- wiring

  async function refreshAll(flow) {
    views.lastFetch = Date.now();
    try {
      await refreshGraph(flow);
      await refreshStream(flow);
      await refreshList();
    } catch (err) {
      console.warn("fleetflow views:", err);
    }
  }

  // Called by dashboard.js with each snapshot of the selected flow run.
  views.update = (flow) => {
    const moved = flow.id !== views.flowId;
    if (moved) {
      views.flowId = flow.id;
      views.offset = 0;
      views.graphEdges = null;
      $("#tr-index").value = "";
      $("#tr-state").value = "";
    }
    $("#flow-cancel").hidden = flow.state !== "RUNNING";
    // The graph follows every snapshot (its edges are fetched once per flow run).
    if (!moved && views.graphEdges && views.graphEdges.flow === flow.id &&
        (flow.events !== views.events || flow.state !== views.state)) {
      renderGraph(flow.node_counts.map((n, i) => ({ ...n, depth: views.graphEdges.depth[i] })),
        views.graphEdges.edges);
    }
    const changedState = flow.events !== views.events || flow.state !== views.state;
    views.events = flow.events;
    views.state = flow.state;
    if (moved || (changedState && Date.now() - views.lastFetch >= REFRESH_MS)) refreshAll(flow);
  };

  for (const id of ["#tr-state", "#tr-task", "#tr-index"]) {
    $(id).addEventListener("change", () => { views.offset = 0; refreshList(); });
  }
  $("#tr-prev").addEventListener("click", () => { views.offset = Math.max(0, views.offset - PAGE); refreshList(); });
  $("#tr-next").addEventListener("click", () => { views.offset += PAGE; refreshList(); });
  $("#task-runs tbody").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-task-run]");
    if (row) showTaskRun(row.dataset.taskRun);
  });
  $("#tr-close").addEventListener("click", (event) => {
    event.preventDefault();
    $("#task-run-panel").hidden = true;
    views.taskRunId = null;
  });
  $("#flow-cancel").addEventListener("click", async () => {
    if (!views.flowId || !window.confirm(`Cancel flow run ${views.flowId}?`)) return;
    try {
      const done = await post(`/api/flow-runs/${encodeURIComponent(views.flowId)}/cancel`);
      $("#flow-cancel").textContent = `cancelled ${done.cancelled} task runs`;
    } catch (err) {
      window.alert(`cancel refused: ${err.message}`);
    }
  });
  $("#tr-cancel").addEventListener("click", async () => {
    if (!views.taskRunId || !window.confirm(`Cancel task run ${views.taskRunId}?`)) return;
    try {
      await post(`/api/task-runs/${views.taskRunId}/cancel`);
      showTaskRun(views.taskRunId);
    } catch (err) {
      window.alert(`cancel refused: ${err.message}`);
    }
  });
})();
