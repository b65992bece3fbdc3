"""Render ``benchmarks/out/results.json`` as ``benchmarks/RESULTS.md``.

.venv/bin/python benchmarks/report.py   # re-render without re-running
"""

from __future__ import annotations

import json
import statistics
import sys

from common import OUT

PEERS = ["dask", "prefect", "prefect-threads", "ray"]
SYSTEMS = ["fleetflow", *PEERS]

CONFIG = {
    "fleetflow": "coordinator + 2 worker processes (`--cpu 1` each, so 1 task at a time each; "
    "plain `def` tasks run in each worker's 1-process forkserver pool); this process is the "
    "client; all on 127.0.0.1",
    "dask": "`LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`, no dashboard; "
    "scheduler in the client process (W5: a scheduler process of its own, no workers)",
    "prefect": "`ProcessPoolTaskRunner(max_workers=2)`, the runner Prefect documents for "
    "parallel CPU-bound work, with a local `prefect server start` on 127.0.0.1 (SQLite, fresh "
    "`PREFECT_HOME` per start, started and awaited as part of startup) that the flow process "
    "and the pool processes share. Not the temporary server: with it, each pool process "
    "starts a temporary server of its own for every flow run (seen in the smoke runs: 200 "
    "no-op tasks took 32 s), so task runs would not even reach the flow's server. "
    "`task.map(...)` then `.result()`; a one-task flow calls the task directly (W3); "
    "default logging",
    "prefect-threads": "`ThreadPoolTaskRunner(max_workers=2)` (Prefect's default kind of "
    "runner) with the temporary server that the first flow run starts (Prefect's default "
    "when no server is configured): run where the process pool cannot finish (W1 at 10,000 "
    "and 100,000) and for W5, since the process pool submits too slowly to queue 100,000",
    "ray": "`ray.init(num_cpus=2)`: a local Ray cluster on 127.0.0.1 started by the client "
    "process, no dashboard, `@ray.remote` tasks with the default of 1 CPU each, results with "
    "`ray.get`; its own virtual environment (`.venv-ray`)",
}


def _short_error(res: dict, limit: int = 90) -> str:
    text = _status_text(res)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits - 1}f}" if abs(x) >= 1 else f"{x:.{digits}f}"


def _stats(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _cell(st: tuple[float, float, float] | None, unit: str = "") -> str:
    if st is None:
        return "—"
    med, lo, hi = st
    if lo == hi:
        return f"**{_fmt(med)}**{unit}"
    return f"**{_fmt(med)}**{unit} ({_fmt(lo)}–{_fmt(hi)})"


def _status_text(res: dict | None) -> str:
    if res is None:
        return "not run"
    status = res.get("status")
    if status == "did_not_finish":
        return f"did not finish within {res.get('timeout_s', '?'):g} s"
    if status == "skipped":
        return res.get("error", "skipped")
    if status == "failed":
        return f"failed: {res.get('error', '?')}"
    return status or "?"


class Metric:
    """One table row: how to read a value per repetition, and which way is better."""

    def __init__(self, label, unit, getter, higher_better, bound=None):
        self.label = label
        self.unit = unit
        self.getter = getter
        self.higher_better = higher_better
        #: For a run that did not finish: an upper (or lower) bound on the value.
        self.bound = bound

    def values(self, row: dict, res: dict) -> list[float]:
        out = []
        for rep in res.get("reps") or []:
            try:
                v = self.getter(row, rep)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            if v is not None:
                out.append(v)
        return out


def _w1_bound(row: dict, res: dict) -> float | None:
    """A W1 run that did not finish: its rate was below n / (timeout - startup)."""
    if res.get("status") != "did_not_finish" or res.get("reps"):
        return None
    startup = res.get("startup_s")
    if startup is None:
        return None
    spare = res["timeout_s"] - startup
    return row["n"] / spare if spare > 0 else None


def _metrics(entry: str, row: dict) -> list[Metric]:
    w = row["workload"]
    if w == "W1":
        return [
            Metric(
                f"{entry} no-op map, task runs/s",
                "/s",
                lambda r, rep: r["n"] / rep["wall_s"],
                True,
                _w1_bound,
            )
        ]
    if w == "W2":
        ideal = row["n"] * 0.010 / 2
        return [
            Metric(
                f"W2 {row['n']:,} × sleep 10 ms, wall s (ideal {ideal:g} s)",
                " s",
                lambda r, rep: rep["wall_s"],
                False,
            )
        ]
    if w == "W3":
        return [
            Metric(
                f"W3 one-task flow round trip ×{row['n']}, p50 ms",
                " ms",
                lambda r, rep: rep["p50_ms"],
                False,
            ),
            Metric(
                f"W3 one-task flow round trip ×{row['n']}, p99 ms",
                " ms",
                lambda r, rep: rep["p99_ms"],
                False,
            ),
        ]
    if w == "W4":
        serial = statistics.median(row["serial_s"]) if row.get("serial_s") else None
        return [
            Metric(
                f"W4 {row['n']} × ~50 ms CPU, speedup over serial (ideal 2)",
                "×",
                lambda r, rep: rep.get("speedup") or serial / rep["wall_s"],
                True,
            ),
            Metric(
                f"W4 wall s (serial in one process: {_fmt(serial)} s)",
                " s",
                lambda r, rep: rep["wall_s"],
                False,
            ),
        ]
    if w == "W5":

        def rss(r, rep):
            return rep.get("rss_mib", rep.get("flow_process_rss_mib"))

        def accept(r, rep):
            if "all_pending_s" in rep:
                return rep["all_pending_s"]
            if "accepted_s" in rep:
                return rep["accepted_s"]
            return rep.get("submit_s")

        return [
            Metric(
                f"{entry} pending task runs: RSS of coordinator / scheduler, MiB",
                " MiB",
                rss,
                False,
            ),
            Metric(f"{entry}: seconds until all {row['n']:,} are pending", " s", accept, False),
            Metric(
                f"{entry} then run to the end by 2 workers: coordinator peak RSS "
                "(submission, pending and run), MiB",
                " MiB",
                lambda r, rep: rep.get("run_peak_rss_mib"),
                False,
            ),
            Metric(
                f"{entry} then run to the end by 2 workers: wall s (results checked)",
                " s",
                lambda r, rep: rep.get("run_s"),
                False,
            ),
        ]
    return []


def _ratio(ff: float | None, peer: float | None, higher_better: bool, bound: str = "") -> str:
    if ff is None or peer is None or peer == 0:
        return "—"
    r = ff / peer
    if bound and (r > 1) != higher_better:
        return "— (the bound proves nothing)"
    better = (r > 1) == higher_better
    arrow = "fleetflow better" if better else "fleetflow worse"
    if abs(r - 1) < 0.03:
        arrow = "even"
    return f"{bound}{_fmt(r)}× ({arrow})"


#: Sections other scripts write into RESULTS.md (benchmarks/tls_overhead.py), between
#: these markers; a fresh render keeps them.
KEPT_BEGIN = "<!-- kept:begin "
KEPT_END = "<!-- kept:end -->"


def with_kept_sections(text: str, previous: str) -> str:
    """``text`` plus the kept sections of ``previous`` (an older RESULTS.md)."""
    kept = []
    rest = previous
    while KEPT_BEGIN in rest and KEPT_END in rest:
        start = rest.index(KEPT_BEGIN)
        end = rest.index(KEPT_END, start) + len(KEPT_END)
        kept.append(rest[start:end])
        rest = rest[end:]
    return text.rstrip("\n") + "".join(f"\n\n{k}" for k in kept) + "\n"


def render(results: dict) -> str:
    m = results["machine"]
    lines = ["# fleetflow benchmark results", ""]
    lines += [
        "Written by `benchmarks/run.py`; raw numbers in `benchmarks/out/results.json` (not "
        "committed). Do not edit by hand: re-run the command below.",
        "",
        "## Run",
        "",
        "- Commands, in order (a later `--merge` command re-measured the rows its `--only` "
        "and `--systems` name, and those replace the earlier ones):",
        f"  1. `{results['command']}`: {m['date_utc']} UTC, fleetflow {m['commit']}"
        + (f", {results['total_s'] / 60:.1f} min" if "total_s" in results else ""),
        *[
            f"  {i}. `{c['command']}`: {c['date_utc']} UTC, fleetflow {c['commit']}"
            + (f", {c['total_s'] / 60:.1f} min" if "total_s" in c else "")
            for i, c in enumerate(results.get("merged_commands", []), start=2)
        ],
        *(
            [
                "  Re-measuring with `--merge` is for rows whose conditions changed during the "
                "first command, e.g. fleetflow's code (other work landed while it ran: see the "
                "code line under Results, which names the code every fleetflow row ran on)."
            ]
            if results.get("merged_commands")
            else []
        ),
        f"- Machine: {m['nproc']} logical CPUs ({m['cpu_model']}), {m['memory_gib']} GiB "
        f"memory, Linux {m['kernel']}, {m['implementation']} {m['python']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Repetitions: {results['reps']} per (system, workload) unless a row says otherwise; "
        "cells show the **median** and (min–max) over repetitions.",
        "- Peers ran inside a network namespace with only loopback (`unshare -n`), with "
        "`DO_NOT_TRACK=1` and `PREFECT_SERVER_ANALYTICS_ENABLED=false`."
        + (
            f" **Peers could not run: {results['netns_problem']}**"
            if results.get("netns_problem")
            else ""
        ),
    ]
    if results.get("w4_iters"):
        lines.append(
            f"- W4 task: `cpu_burn` with {results['w4_iters']:,} loop iterations, "
            "calibrated to ~50 ms in one process on this machine at the start of the run."
        )
    lines += ["", "Systems:", ""]
    rows = results["entries"].values()
    present = [s for s in SYSTEMS if any(s in row["systems"] for row in rows)]
    for s in present:
        lines.append(f"- **{s}**: {CONFIG[s]}")

    # ------------------------------------------------------------------ startup
    lines += [
        "",
        "## Startup (apart from workload time)",
        "",
        "From launching the system until a 2-item map has run (fleetflow: coordinator "
        "and 2 worker processes registered; Dask: `LocalCluster` and `Client`, imports "
        "included; prefect: `prefect server start` until healthy, imports, first flow "
        "run with its pool; prefect-threads: imports, temporary server with a fresh "
        "database, first flow run). Every system start of the run counts once.",
        "",
        "| system | starts | startup s |",
        "|---|---|---|",
    ]
    for s in present:
        vals = []
        for row in results["entries"].values():
            res = row["systems"].get(s)
            if not res:
                continue
            if res.get("startup_s") is not None:
                vals.append(res["startup_s"])
            for rep in res.get("reps") or []:
                if row["workload"] == "W5" and rep.get("startup_s") is not None:
                    vals.append(rep["startup_s"])
        # W5 for fleetflow / dask starts no workers: keep them apart.
        lines.append(f"| {s} | {len(vals)} | {_cell(_stats(vals), ' s')} |")
    lines += [
        "",
        "fleetflow's W5 starts (coordinator only) and Dask's W5 starts (scheduler "
        "process only) are included above; they start no workers.",
        "",
    ]

    # ------------------------------------------------------------------ main table
    lines += [
        "## Results",
        "",
        "Ratios are fleetflow's value divided by the peer's; the words say which way "
        "is better for that row.",
        "",
    ]
    header = ["workload"] + present + [f"fleetflow / {p}" for p in present if p != "fleetflow"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    notes: list[str] = []
    for entry, row in results["entries"].items():
        if row["workload"] == "W6":
            continue
        for metric in _metrics(entry, row):
            cells = [metric.label]
            medians: dict[str, float | None] = {}
            bounds: dict[str, float | None] = {}
            for s in present:
                res = row["systems"].get(s)
                if res is None:
                    cells.append("not run")
                    medians[s] = None
                    continue
                vals = metric.values(row, res)
                st = _stats(vals)
                medians[s] = st[0] if st else None
                if st:
                    text = _cell(st, metric.unit)
                    if res.get("status") != "ok":
                        text += f" ({len(vals)} rep(s); then {_short_error(res)})"
                    cells.append(text)
                elif res.get("status") == "ok":
                    cells.append("not measured")  # a fleetflow-only row (e.g. W5's run)
                else:
                    bound = metric.bound(row, res) if metric.bound else None
                    bounds[s] = bound
                    text = _short_error(res)
                    if bound is not None:
                        text = f"< {_fmt(bound)}{metric.unit}: {text}"
                    cells.append(text)
                if res.get("note"):
                    notes.append(f"{entry}, {s}: {res['note']}")
            for p in present:
                if p == "fleetflow":
                    continue
                if medians.get(p) is None and bounds.get(p) is not None:
                    # peer's rate < bound, so fleetflow / peer > fleetflow / bound
                    cells.append(
                        _ratio(
                            medians.get("fleetflow"),
                            bounds[p],
                            metric.higher_better,
                            "> " if metric.higher_better else "< ",
                        )
                    )
                else:
                    cells.append(
                        _ratio(medians.get("fleetflow"), medians.get(p), metric.higher_better)
                    )
            lines.append("| " + " | ".join(cells) + " |")
    failures = []
    for entry, row in results["entries"].items():
        for s, res in row["systems"].items():
            if res.get("status") in ("failed", "did_not_finish"):
                failures.append(
                    f"{entry}, {s}: {_status_text(res)}"
                    + (
                        f" ({len(res['reps'])} repetition(s) done before)"
                        if res.get("reps")
                        else ""
                    )
                )
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in sorted(set(notes))]
    if failures:
        lines += ["", "Failures and time-outs (a peer's failure is a result):", ""]
        lines += [f"- {f}" for f in failures]
    lines += [
        "",
        'A "< N/s" cell is an upper bound: the run did not finish its map within the time '
        "left after startup, so its rate was below items / (timeout − startup); the ratio "
        "next to it is then a lower bound. W3: fleetflow and Dask run the task on a worker "
        "process; Prefect runs a directly called task inside the flow's own process, and "
        "its ~1.07 s is mostly the flow engine joining its heartbeat thread (which sleeps in "
        "1 s steps) when the flow run ends (prefect/flow_engine.py `_send_heartbeats`).",
    ]

    codes = {}
    for entry, row in results["entries"].items():
        res = row["systems"].get("fleetflow") or {}
        if res.get("code"):
            codes.setdefault(res["code"], []).append(entry)
    if codes:
        lines += [
            "",
            "fleetflow code each row ran on (git HEAD / sha256 of client/, "
            "coordinator/, worker/ `*.py` when its fleet started): "
            + "; ".join(f"`{c}`: {', '.join(e)}" for c, e in codes.items())
            + ".",
        ]
    lines += _w5_details(results)
    lines += _load(results)
    lines += _w6(results)
    lines += _cpu_table(results)
    lines.append("")
    return "\n".join(lines)


def _w5_details(results: dict) -> list[str]:
    out = []
    for entry, row in results["entries"].items():
        if row["workload"] != "W5":
            continue
        if not out:
            out += [
                "",
                "## W5 details",
                "",
                "RSS read with psutil once every task run is pending, after 1 s to settle; "
                "peak is the process's VmHWM. fleetflow: coordinator with no worker "
                "connected. Dask: the scheduler process, no worker connected. Prefect: task "
                "runs that wait for a file, 2 running and the rest queued in the flow "
                "process's task runner, which is where a local Prefect run keeps pending "
                "work; the temporary server's RSS is given apart.",
                "",
                "| entry | system | idle RSS MiB | RSS MiB | peak MiB | other | status |",
                "|---|---|---|---|---|---|---|",
            ]
        for s, res in row["systems"].items():
            for i, rep in enumerate(res.get("reps") or [{}]):
                idle = rep.get("rss_idle_mib", rep.get("flow_process_rss_mib_idle"))
                rss = rep.get("rss_mib", rep.get("flow_process_rss_mib"))
                peak = rep.get("peak_rss_mib", rep.get("flow_process_peak_rss_mib"))
                other = []
                if "server_rss_mib" in rep:
                    other.append(
                        f"server RSS {_fmt(rep['server_rss_mib'])} MiB "
                        f"(idle {_fmt(rep.get('server_rss_mib_idle'))})"
                    )
                for key, label in (
                    ("client_build_s", "spec built"),
                    ("accepted_s", "submit returned"),
                    ("startup_s", "started in"),
                    ("all_pending_s", "all pending"),
                    ("client_map_s", "client.map returned"),
                    ("submit_s", "map submitted"),
                ):
                    if key in rep:
                        other.append(f"{label} {_fmt(rep[key])} s")
                if "spec_bytes" in rep:
                    other.append(f"spec {rep['spec_bytes'] / 2**20:.1f} MiB")
                if "client_rss_mib" in rep:
                    other.append(f"client RSS {_fmt(rep['client_rss_mib'])} MiB")
                status = _status_text(res) if i == len(res.get("reps") or [{}]) - 1 else "ok"
                if res.get("status") != "ok" and "rss_mib_at_timeout" in res:
                    other.append(f"RSS at timeout {_fmt(res['rss_mib_at_timeout'])} MiB")
                if res.get("status") != "ok" and "flow_process_rss_mib" in res and not rep:
                    rss = res["flow_process_rss_mib"]
                    idle = res.get("flow_process_rss_mib_idle")
                    peak = res.get("flow_process_peak_rss_mib")
                    other.append("RSS read when the time ran out, the map still being submitted")
                    if "server_rss_mib" in res:
                        other.append(f"server RSS {_fmt(res['server_rss_mib'])} MiB")
                out.append(
                    f"| {entry} | {s} | {_fmt(idle)} | {_fmt(rss)} | {_fmt(peak)} | "
                    f"{'; '.join(other) or '—'} | {status} |"
                )
    return out


def _load(results: dict) -> list[str]:
    out = [
        "",
        "## Machine load",
        "",
        "1-minute load average before and after each (workload, system), from "
        "`os.getloadavg()`. Anything above what the benchmark itself runs (2 workers + "
        "coordinator + client ≈ 2–3) is other work on the machine.",
        "",
        "| entry | " + " | ".join(SYSTEMS) + " |",
        "|---|" + "---|" * len(SYSTEMS),
    ]
    for entry, row in results["entries"].items():
        cells = []
        for s in SYSTEMS:
            res = row["systems"].get(s)
            if res and "loadavg_before" in res:
                cells.append(f"{res['loadavg_before']:.1f} → {res['loadavg_after']:.1f}")
            else:
                cells.append("")
        out.append(f"| {entry} | " + " | ".join(cells) + " |")
    return out


def _w6(results: dict) -> list[str]:
    row = results["entries"].get("W6")
    if not row:
        return []
    res = row["systems"].get("fleetflow")
    if not res:
        return []
    plain = results["entries"].get("W1-10k", {}).get("systems", {}).get("fleetflow", {})
    out = [
        "",
        "## W6: fleet scale (fleetflow only)",
        "",
        f"{res.get('agents', '?')} simulated workers in {res.get('agent_processes', '?')} "
        "processes (grpc.aio, one connection each, `RegisterWorker` then `Heartbeat` at the "
        "coordinator's 1 s interval, never leasing) next to the 2 real workers, while W1 runs "
        f"{row['n']:,} items. Status: {_status_text(res)}.",
        "",
    ]
    if res.get("status") != "ok" and res.get("error"):
        out += [f"Error: {res['error']}", ""]
    reps = res.get("reps") or []
    plain_reps = plain.get("reps") or []
    tput = _stats([row["n"] / r["wall_s"] for r in reps])
    tput_plain = _stats([row["n"] / r["wall_s"] for r in plain_reps])
    ccpu = _stats([r["coordinator_cpu_s"] for r in reps])
    ccpu_plain = _stats([r["coordinator_cpu_s"] for r in plain_reps])
    ratio = f"{tput[0] / tput_plain[0]:.2f}×" if tput and tput_plain else "—"
    out += [
        "| | W1 with simulated workers | plain W1 (W1-10k above) | ratio |",
        "|---|---|---|---|",
        f"| task runs/s | {_cell(tput, '/s')} | {_cell(tput_plain, '/s')} | {ratio} |",
        f"| coordinator CPU s over the W1 run | {_cell(ccpu, ' s')} | "
        f"{_cell(ccpu_plain, ' s')} | "
        f"{(f'{ccpu[0] / ccpu_plain[0]:.2f}×' if ccpu and ccpu_plain else '—')} |",
        f"| simulated agents' own CPU s over the W1 run | "
        f"{_cell(_stats([r.get('sim_cpu_s', 0) for r in reps]), ' s')} | — | |",
        f"| agents' heartbeat latency p50 during W1 | "
        f"{_cell(_stats([r['hb_p50_ms'] for r in reps if 'hb_p50_ms' in r]), ' ms')} | — | |",
        f"| agents' heartbeat latency p99 during W1 | "
        f"{_cell(_stats([r['hb_p99_ms'] for r in reps if 'hb_p99_ms' in r]), ' ms')} | — | |",
        f"| heartbeats answered during W1 (per rep) | "
        f"{_cell(_stats([r['hb_count'] for r in reps if 'hb_count' in r]))} | — | |",
        "",
    ]
    idle2 = res.get("coord_cpu_idle_2_workers_pct")
    idle_all = res.get("coord_cpu_idle_with_agents_pct")
    out += [
        f"Idle coordinator CPU (no flow running): {_fmt(idle2)} % of one core with the 2 "
        f"real workers, {_fmt(idle_all)} % with the simulated workers too "
        f"(agents' processes: {_fmt(res.get('sim_cpu_idle_pct'))} %). Whole run: "
        f"{res.get('heartbeats_ok', 0):,} heartbeats answered, "
        f"{res.get('heartbeat_errors', 0)} failed, {res.get('register_errors', 0)} failed "
        f"registrations, {res.get('reregistrations', 0)} re-registrations; all "
        f"{res.get('agents', '?')} agents registered in {_fmt(res.get('agents_registered_s'))} "
        "s. On this 2-CPU machine the agents' processes compete with the fleet for CPU."
    ]
    if res.get("note"):
        out.append(f"Note: {res['note']}")
    return out


def _cpu_table(results: dict) -> list[str]:
    out = [
        "",
        "## Where fleetflow's CPU goes (per W1 repetition)",
        "",
        "| entry | wall s | coordinator CPU s | workers CPU s (2 workers + pool children) | "
        "coordinator CPU per task run | coordinator RSS after, MiB |",
        "|---|---|---|---|---|---|",
    ]
    found = False
    for entry, row in results["entries"].items():
        if row["workload"] not in ("W1", "W6"):
            continue
        res = row["systems"].get("fleetflow") or {}
        reps = res.get("reps") or []
        if not reps:
            continue
        found = True
        wall = _stats([r["wall_s"] for r in reps])
        coord = _stats([r["coordinator_cpu_s"] for r in reps])
        work = _stats([r["workers_cpu_s"] for r in reps])
        per = _stats([r["coordinator_cpu_s"] / row["n"] * 1e6 for r in reps])
        rss = _stats([r["coordinator_rss_mib"] for r in reps])
        out.append(
            f"| {entry} | {_cell(wall)} | {_cell(coord)} | {_cell(work)} | "
            f"{_cell(per, ' µs')} | {_cell(rss)} |"
        )
    return out if found else []


if __name__ == "__main__":
    data = json.loads((OUT / "results.json").read_text())
    text = render(data)
    target = sys.argv[1] if len(sys.argv) > 1 else str(OUT.parent / "RESULTS.md")
    try:
        with open(target) as f:
            text = with_kept_sections(text, f.read())
    except FileNotFoundError:
        pass
    with open(target, "w") as f:
        f.write(text)
    print(f"wrote {target}")
