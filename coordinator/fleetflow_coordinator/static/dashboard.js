// fleetflow dashboard: one page, no build step. Live updates arrive as
// server-sent events from /api/stream; each one is a whole snapshot (see
// fleetflow_coordinator/observe.py), so a lost message costs nothing and a
// reconnect needs no replay. Read-only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  source: null,
  flowId: null,        // from the URL hash; null follows the newest running flow run
  rendered: {},        // section name -> JSON last rendered, to skip unchanged sections
  openFailures: new Set(),
  updates: 0,
  last: null,
};
window.fleetflow = state; // for debugging from the console (and for tests)

// ------------------------------------------------------------------ helpers

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
  const h = Math.floor(m / 60);
  return `${h}h ${m % 60}m`;
}

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function clock(epoch) {
  if (!epoch) return "";
  return new Date(epoch * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function shortId(id) {
  return id.length > 12 ? id.slice(0, 12) : id;
}

function amount(resource, value) {
  if (resource === "memory" || resource === "gpu_memory") return bytes(value);
  return (Math.round(value * 100) / 100).toString();
}

// A stacked progress bar: segments as fractions of total.
function bar(total, segments) {
  if (!total) return `<div class="bar"></div>`;
  const parts = segments
    .filter(([, n]) => n > 0)
    .map(([cls, n]) => `<span class="${cls}" style="width:${(100 * n / total).toFixed(3)}%"></span>`);
  return `<div class="bar">${parts.join("")}</div>`;
}

function changed(section, data) {
  const text = JSON.stringify(data);
  if (state.rendered[section] === text) return false;
  state.rendered[section] = text;
  return true;
}

function show(id, visible) {
  $(id).hidden = !visible;
}

// ------------------------------------------------------------------ render

function renderSummary(data) {
  const fleet = data.fleet;
  const runs = fleet.flow_runs;
  const rate = fleet.rate_per_s;
  $("#fleet-summary").innerHTML = [
    `<span><b>${num(runs.RUNNING || 0)}</b> running</span>`,
    `<span><b>${num(runs.COMPLETED || 0)}</b> completed</span>`,
    `<span><b>${num(runs.FAILED || 0)}</b> failed</span>`,
    `<span><b>${num(runs.CANCELLED || 0)}</b> cancelled</span>`,
    `<span><b>${num(fleet.workers)}</b> workers</span>`,
    `<span><b>${num(fleet.running)}</b> task runs running</span>`,
    `<span><b>${rate.toFixed(1)}</b> task runs/s</span>`,
  ].join("");
}

function renderFlows(data) {
  const rows = data.flows.map((f) => {
    const selected = f.id === data.selected ? " selected" : "";
    const total = f.total_known ? num(f.total) : `${num(f.total)}+`;
    const segs = [["completed", f.completed], ["failed", f.failed],
      ["upstream", f.upstream_failed], ["cancelled", f.cancelled], ["running", f.running]];
    return `<tr data-flow="${esc(f.id)}" class="${selected}">
      <td class="id" title="${esc(f.id)}">${esc(shortId(f.id))}</td>
      <td>${esc(f.name)}</td>
      <td><span class="state ${esc(f.state)}">${esc(f.state)}</span></td>
      <td>${bar(f.total, segs)}</td>
      <td class="num">${num(f.finished)} / ${total}</td>
      <td class="num">${num(f.failed)}</td>
      <td class="num">${num(f.upstream_failed)}</td>
      <td class="num">${num(f.cancelled)}</td>
      <td>${clock(f.created_at)}</td>
      <td class="num">${duration(f.duration_s)}</td>
    </tr>`;
  });
  $("#flows tbody").innerHTML = rows.join("");
  show("#flows-empty", data.flows.length === 0);
  const total = data.fleet.flow_runs_total;
  $("#flows-count").textContent = total > data.flows.length
    ? `(newest ${data.flows.length} of ${num(total)})` : `(${num(total)})`;
}

function renderFlowHeader(flow, data) {
  $("#flow-title").textContent = `${flow.name} · ${flow.id}`;
  const badge = $("#flow-state");
  badge.textContent = flow.state;
  badge.className = `state ${flow.state}`;
  const ended = flow.ended_at ? `, ended ${clock(flow.ended_at)}` : "";
  $("#flow-meta").textContent =
    `submitted ${clock(flow.created_at)}${ended}, ${duration(flow.duration_s)}, ` +
    `${num(flow.finished)} / ${num(flow.total)} task runs done: ${num(flow.completed)} completed, ` +
    `${num(flow.failed)} failed, ${num(flow.upstream_failed)} upstream failed, ` +
    `${num(flow.cancelled)} cancelled; ${num(flow.retries)} retries`;
  show("#flow-follow", Boolean(data.requested));
}

function renderNodes(flow) {
  const rows = flow.node_counts.map((n) => {
    const c = n.counts;
    const queued = c.scheduled + c.awaiting_retry;
    const failed = c.failed + c.timed_out;
    const total = n.total === null ? null : n.total;
    const segs = [["completed", c.completed], ["failed", failed],
      ["upstream", c.upstream_failed], ["cancelled", c.cancelled], ["running", c.running], ["queued", queued]];
    return `<tr data-node="${n.node}">
      <td class="num">${n.node}</td>
      <td>${esc(n.task_name)}${n.map ? ' <span class="muted">map</span>' : ""}</td>
      <td>${bar(total || 0, segs)}</td>
      <td class="num done">${total === null && n.ended_unexpanded ? esc(n.ended_unexpanded.replace("_", " ")) : `${num(n.finished)} / ${total === null ? "?" : num(total)}`}</td>
      <td class="num">${num(c.running)}</td>
      <td class="num">${num(queued)}</td>
      <td class="num">${num(c.pending)}</td>
      <td class="num completed-count">${num(c.completed)}</td>
      <td class="num">${num(failed)}</td>
      <td class="num">${num(c.upstream_failed)}</td>
      <td class="num">${num(c.cancelled)}</td>
      <td class="muted">${esc(n.resources)}</td>
    </tr>`;
  });
  $("#nodes tbody").innerHTML = rows.join("");
}

function renderWarnings(flow) {
  const items = flow.unschedulable.map((u) =>
    `<div class="warning">node ${u.node} (${esc(flow.node_counts[u.node].task_name)}) cannot be scheduled: ${esc(u.message)}</div>`);
  $("#flow-warnings").innerHTML = items.join("");
}

function taskRef(r) {
  return `<span title="task run ${r.task_run_id}, attempt ${r.attempt}">${esc(r.task_name)}[${r.index}]` +
    (r.attempt > 1 ? ` <span class="muted">#${r.attempt}</span>` : "") + "</span>";
}

function renderSlowest(flow) {
  $("#slowest tbody").innerHTML = flow.slowest.map((r) => `<tr>
    <td>${taskRef(r)}</td><td class="muted">${esc(r.worker_id)}</td>
    <td>${esc(r.outcome)}</td><td class="num">${duration(r.duration_s)}</td></tr>`).join("");
  show("#slowest-empty", flow.slowest.length === 0);
  $("#running tbody").innerHTML = flow.running_longest.map((r) => `<tr>
    <td>${taskRef(r)}</td><td class="muted">${esc(r.worker_id)}</td>
    <td class="num">${duration(r.running_s)}</td></tr>`).join("");
  show("#running-empty", flow.running_longest.length === 0);
}

function renderFailures(flow) {
  const items = [];
  if (flow.first_error && flow.failure_entries > flow.failures.length) {  // scrolled out of the recent list
    const e = flow.first_error;
    items.push(failureItem("first", "first failure of the flow run", e.task_name, e.type, e.message, e.traceback));
  }
  for (const f of flow.failures) {
    const where = (f.kind === "NODE_FAILED" ? f.task_name : `${f.task_name}[${f.index}]`) +
      (f.attempt ? ` attempt ${f.attempt}` : "") +
      (f.worker_id ? ` on ${f.worker_id}` : "");
    items.push(failureItem(String(f.seq), `${f.kind} · ${clock(f.time)}`, where, f.type, f.message, f.traceback));
  }
  const box = $("#failures");
  box.innerHTML = items.join("");
  box.querySelectorAll("details").forEach((d) => {
    d.open = state.openFailures.has(d.dataset.key);
    d.addEventListener("toggle", () => {
      if (d.open) state.openFailures.add(d.dataset.key); else state.openFailures.delete(d.dataset.key);
    });
  });
  show("#failures-empty", items.length === 0);
  const shown = flow.failures.length;
  const counts = `${num(flow.failures_total)} failed task runs, ${num(flow.retries)} retries, ` +
    `${num(flow.lost_attempts)} lost attempts`;
  $("#failures-count").textContent = flow.failure_entries > shown
    ? `(${counts}; latest ${shown} of ${num(flow.failure_entries)} entries)` : `(${counts})`;
}

function failureItem(key, kind, where, type, message, traceback) {
  const head = `<span class="kind">${esc(kind)}</span> <b>${esc(where)}</b>: ` +
    `${esc(type)}${type ? ": " : ""}${esc(message)}`;
  if (!traceback) return `<div class="failure">${head}</div>`;
  return `<details class="failure" data-key="${esc(key)}"><summary>${head}</summary>` +
    `<pre>${esc(traceback)}</pre></details>`;
}

// Where the flow run's time went: task-run seconds per state (summed over task runs).
function renderTime(flow) {
  const t = flow.time_in_state || {};
  const parts = [["pending", "pending (upstream)", t.pending || 0], ["queued", "queued (for a worker)", t.queued || 0],
    ["running", "running", t.running || 0], ["awaiting", "awaiting retry", t.awaiting_retry || 0]];
  const total = parts.reduce((sum, p) => sum + p[2], 0);
  $("#time-in-state").innerHTML = `<div class="bar time">${parts.filter((p) => p[2] > 0).map(([cls, , s]) =>
    `<span class="${cls}" style="width:${(100 * s / total).toFixed(3)}%"></span>`).join("")}</div>` +
    `<div class="time-legend">${parts.map(([cls, label, s]) =>
      `<span><i class="seg ${cls}"></i>${label} <b>${duration(s)}</b>` +
      `${total ? ` (${Math.round(100 * s / total)}%)` : ""}</span>`).join("")}</div>`;
  $("#time-total").textContent = total
    ? `(${duration(total)} of task-run time, summed over ${num(flow.total)} task runs; ` +
      `the flow run took ${duration(flow.duration_s)})` : "";
}

function pair(q, fmt) {
  return `${fmt(q.median)} / ${fmt(q.p95)}`;
}

function cores(n) {
  return (Math.round(n * 100) / 100).toString();
}

// GPU use of a task's measured attempts: p95 SM utilisation and peak GPU memory.
function gpuUse(u) {
  if (!u.gpu_measured_attempts) return "-";
  const util = u.gpu_utilization_percent.p95;
  return `${Math.round(util)}% / ${bytes(u.peak_gpu_memory_bytes.p95)}`;
}

// Requested against measured use per task, with right-sizing advice.
function renderUsage(flow) {
  const rows = flow.usage || [];
  $("#usage tbody").innerHTML = rows.map((u) => {
    const advised = new Set(u.advice.map((a) => a.resource));
    const cpu = u.requested.cpu;
    const memory = u.requested.memory;
    return `<tr data-usage="${esc(u.task_name)}">
      <td class="num">${u.node}</td><td>${esc(u.task_name)}</td>
      <td class="num">${num(u.measured_attempts)}</td>
      <td class="num">${cpu ? cores(cpu) : "-"}</td>
      <td class="num ${advised.has("cpu") ? "advised" : ""}">${pair(u.cpu_cores, cores)}</td>
      <td class="num">${memory ? bytes(memory) : "-"}</td>
      <td class="num ${advised.has("memory") ? "advised" : ""}">${pair(u.peak_memory_bytes, bytes)}</td>
      <td class="num">${pair(u.duration_seconds, duration)}</td>
      <td class="num ${advised.has("gpu") || advised.has("gpu_memory") ? "advised" : ""}">${gpuUse(u)}</td>
    </tr>`;
  }).join("");
  $("#advice").innerHTML = rows.flatMap((u) => u.advice).map((a) =>
    `<div class="advice">${esc(a.message)}</div>`).join("");
  show("#usage", rows.length > 0);
  show("#usage-empty", rows.length === 0);
}

function renderWorkers(data) {
  const now = data.server_time;
  const items = data.workers.map((w) => {
    const resources = Object.keys(w.capacity).sort().map((r) => {
      const cap = w.capacity[r];
      const used = w.allocated[r] || 0;
      return `<div class="res"><span>${esc(r)}</span>${bar(cap, [["running", used]])}` +
        `<span class="num">${amount(r, used)} / ${amount(r, cap)}</span></div>`;
    });
    const age = Math.max(0, now - w.last_seen);
    const stale = age > 5 ? "age-stale" : "";
    return `<div class="worker" data-worker="${esc(w.worker_id)}">
      <div class="head"><b class="id">${esc(w.worker_id)}</b>
        <span class="${stale}" title="since its last RPC">heartbeat ${age.toFixed(1)} s ago</span></div>
      <div class="meta">${esc(w.hostname)} pid ${w.pid} · ${num(w.running)} running${w.leased > w.running ? ` (${num(w.leased)} leased)` : ""} ·
        cpu ${w.cpu_percent.toFixed(0)}% · ${bytes(w.memory_available)} memory available ·
        ${w.task_names.length} tasks</div>
      ${(w.gpus || []).length ? `<div class="meta gpus">GPUs: ${w.gpus.map(esc).join(" · ")}</div>` : ""}
      ${resources.join("")}
    </div>`;
  });
  $("#workers").innerHTML = items.join("");
  show("#workers-empty", items.length === 0);
  $("#workers-count").textContent = `(${data.workers.length})`;
}

function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const step = series.step_s;
  const n = series.completed.length;
  const perSecond = (i) => (series.completed[i] + series.failed[i]) / step;
  let peak = 0;
  for (let i = 0; i < n; i += 1) peak = Math.max(peak, perSecond(i));
  const top = 14;
  const bottom = height - 14;
  const plot = bottom - top;
  const css = getComputedStyle(document.documentElement);
  ctx.strokeStyle = css.getPropertyValue("--line");
  ctx.beginPath(); ctx.moveTo(0, bottom + 0.5); ctx.lineTo(width, bottom + 0.5); ctx.stroke();
  ctx.fillStyle = css.getPropertyValue("--muted");
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(`${peak.toFixed(peak < 10 ? 1 : 0)}/s`, 2, 10);
  ctx.fillText(clock(series.start), 2, height - 2);
  const endLabel = clock(series.start + n * step);
  ctx.fillText(endLabel, width - ctx.measureText(endLabel).width - 2, height - 2);
  if (!peak) return;
  const w = width / n;
  for (let i = 0; i < n; i += 1) {
    const ok = series.completed[i] / step;
    const bad = series.failed[i] / step;
    const hOk = (plot * ok) / peak;
    const hBad = (plot * bad) / peak;
    ctx.fillStyle = css.getPropertyValue("--completed");
    ctx.fillRect(i * w, bottom - hOk, Math.max(1, w - 1), hOk);
    ctx.fillStyle = css.getPropertyValue("--failed");
    ctx.fillRect(i * w, bottom - hOk - hBad, Math.max(1, w - 1), hBad);
  }
}

function render(data) {
  state.updates += 1;
  state.last = data;
  renderSummary(data);
  if (changed("flows", data.flows) || changed("selected", data.selected)) renderFlows(data);
  if (changed("workers", [data.workers.map((w) => [w.worker_id, w.running, w.leased, w.allocated, Math.round(w.cpu_percent)]), Math.floor(data.server_time)])) {
    renderWorkers(data);
  }
  if (changed("fleet-chart", data.fleet.throughput)) {
    drawChart($("#fleet-chart"), data.fleet.throughput);
    $("#fleet-rate").textContent = `${data.fleet.rate_per_s.toFixed(1)}/s`;
  }
  const flow = data.flow;
  show("#flow-panel", Boolean(flow));
  if (!flow) return;
  renderFlowHeader(flow, data);
  if (window.fleetflowViews) window.fleetflowViews.update(flow);  // graph, stream, lists (views.js)
  if (changed("nodes", flow.node_counts)) renderNodes(flow);
  if (changed("warnings", flow.unschedulable)) renderWarnings(flow);
  if (changed("slowest", [flow.slowest, flow.running_longest.map((r) => [r.task_run_id, Math.floor(r.running_s)])])) {
    renderSlowest(flow);
  }
  if (changed("time", [flow.id, flow.time_in_state, flow.total, Math.floor(flow.duration_s)])) renderTime(flow);
  if (changed("usage", [flow.id, flow.usage])) renderUsage(flow);
  if (changed("failures", [flow.id, flow.failure_entries, flow.first_error && flow.first_error.type])) renderFailures(flow);
  if (changed("flow-chart", flow.throughput)) {
    drawChart($("#flow-chart"), flow.throughput);
    $("#flow-rate").textContent = flow.state === "RUNNING"
      ? `${flow.rate_per_s.toFixed(1)} task runs/s lately` : "";
  }
}

// -------------------------------------------------------------- connection

function flowFromHash() {
  const match = /^#flow=(.+)$/.exec(window.location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function connect() {
  if (state.source) state.source.close();
  state.flowId = flowFromHash();
  state.rendered = {};
  const query = state.flowId ? `?flow_run_id=${encodeURIComponent(state.flowId)}` : "";
  const source = new EventSource(`/api/stream${query}`);
  const status = $("#connection");
  source.addEventListener("open", () => { status.dataset.state = "live"; status.textContent = "live"; });
  source.addEventListener("error", () => {
    status.dataset.state = "reconnecting";
    status.textContent = "reconnecting";
  });
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  state.source = source;
}

$("#flows tbody").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-flow]");
  if (row) window.location.hash = `flow=${encodeURIComponent(row.dataset.flow)}`;
});
$("#flow-follow").addEventListener("click", (event) => {
  event.preventDefault();
  history.pushState(null, "", window.location.pathname);
  connect();
});
window.addEventListener("hashchange", connect);
window.addEventListener("resize", () => { state.rendered["fleet-chart"] = null; state.rendered["flow-chart"] = null; });
connect();
