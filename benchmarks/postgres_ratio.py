"""PostgreSQL store against SQLite on W1 and W3, plus the hot standby's take-over time (issue 16).

    .venv/bin/python benchmarks/postgres_ratio.py [--reps 3] [--n 100000] [--w3 200]

Each repetition runs, for each store (the order alternates so machine load
affects both alike), a fresh coordinator (defaults, dashboard on) and 2 worker
processes with ``--cpu 1``: W1, a no-op map of ``--n`` items (results checked),
then W3, ``--w3`` sequential one-task flow round trips. The SQLite store gets a
fresh file, the PostgreSQL store a fresh database on the local server
(``postgresql://postgres@127.0.0.1:5432``, created and dropped here).

After the PostgreSQL side of each repetition a second coordinator is started on
the same database as a standby, the active one is SIGKILLed, and the time until
the standby reports SERVING on the gRPC health service is measured (the
database then holds that repetition's W1 and W3 flow runs, so the restore is
part of it), with the default leadership lease (10 s) and with ``--leader-lease
2``. Prints markdown tables and writes them to ``benchmarks/out/postgres_ratio.md``
and into ``benchmarks/RESULTS.md`` between the markers below (other sections are
left alone; ``run.py`` keeps this one).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from common import OUT, Proc, put_kept_section, python, wait_until  # noqa: E402
from ff_fleet import Fleet, run_rep  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
BEGIN = "<!-- kept:begin postgres-ratio -->"
END = "<!-- kept:end -->"


def write_results(body: str) -> str:
    """Put ``body`` into RESULTS.md as the kept PostgreSQL section; return the section."""
    section = "\n".join(
        [BEGIN, "## PostgreSQL store and hot standby (issue 16)", "", body.rstrip("\n"), END]
    )
    put_kept_section(Path(__file__).resolve().parent / "RESULTS.md", section)
    return section


def create_database() -> str:
    name = f"ff_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def health(address: str) -> str:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return exc.code().name


def takeover(fleet: Fleet, dsn: str, lease_s: float | None, tag: str) -> dict:
    """Start a standby on the fleet's database, SIGKILL the active one, time the take-over."""
    assert fleet.coordinator is not None
    port_file = OUT / f"{tag}.port"
    port_file.unlink(missing_ok=True)
    (OUT / f"{tag}.log").unlink(missing_ok=True)  # read below: this start's lines only
    lease = ("--leader-lease", str(lease_s)) if lease_s else ()
    standby = Proc(
        [
            python(),
            "-m",
            "fleetflow_coordinator",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--db",
            dsn,
            "--http",
            "off",
            *lease,
        ],
        OUT / f"{tag}.log",
    )
    try:
        wait_until(lambda: port_file.exists(), 60, what="the standby's port")
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        assert health(address) == "NOT_SERVING"
        os.kill(fleet.coordinator.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: health(address) == "SERVING", 120, 0.02, "the take-over")
        took = time.monotonic() - killed
        active = next(
            json.loads(line)
            for line in standby.log_text().splitlines()
            if '"coordinator_active"' in line
        )
        return {"takeover_s": took, "restore_s": active["takeover_s"]}
    finally:
        standby.stop(grace_s=10)


def one_rep(store: str, n: int, w3: int, rep: int) -> dict:
    tag = f"pg-ratio-{store}"
    fleet = Fleet(OUT, tag)
    database = create_database() if store == "postgresql" else None
    dsn = f"{SERVER}/{database}" if database else ""
    out: dict = {}
    try:
        args: tuple[str, ...] = ("--db", dsn) if database else ()
        if database and rep % 2:
            args += ("--leader-lease", "2")
        fleet.start(workers=2, cpu=1, coordinator_args=args)
        w1 = run_rep(fleet, "W1", n, timeout_s=900)
        out["w1_rate"] = n / w1["wall_s"]
        out["w1_coordinator_cpu_s"] = w1["coordinator_cpu_s"]
        w3_rep = run_rep(fleet, "W3", w3, timeout_s=600)
        out["w3_p50_ms"] = w3_rep["p50_ms"]
        out["w3_p99_ms"] = w3_rep["p99_ms"]
        if database:
            out["lease_s"] = 2.0 if rep % 2 else 10.0
            out.update(takeover(fleet, dsn, out["lease_s"] if rep % 2 else None, f"{tag}-sb"))
    finally:
        fleet.stop()
        if database:
            drop_database(database)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--w3", type=int, default=200)
    ns = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    for rep in range(ns.reps):
        order = ("sqlite", "postgresql") if rep % 2 == 0 else ("postgresql", "sqlite")
        for store in order:
            res = one_rep(store, ns.n, ns.w3, rep)
            runs[store].append(res)
            print(f"rep {rep + 1} {store}: {res}", file=sys.stderr)

    def med(store: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[store])

    def span(store: str, key: str, fmt: str) -> str:
        values = [r[key] for r in runs[store]]
        return f"{min(values):{fmt}}-{max(values):{fmt}}"

    lines = [
        "Command: `.venv/bin/python benchmarks/postgres_ratio.py "
        f"--reps {ns.reps} --n {ns.n} --w3 {ns.w3}` ({started}; 1-minute load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} "
        "CPUs shared with other work). Each repetition starts a fresh coordinator "
        "(defaults) and 2 workers (`--cpu 1`) per store, alternating which store goes "
        "first; the database server is the machine's local PostgreSQL 15.",
        "",
        f"| store | W1-{ns.n // 1000}k task runs/s, median (min-max) | W3 p50 ms | W3 p99 ms |",
        "|---|---|---|---|",
    ]
    for store in runs:
        lines.append(
            f"| {store} | **{med(store, 'w1_rate'):,.0f}** ({span(store, 'w1_rate', ',.0f')}) "
            f"| **{med(store, 'w3_p50_ms'):.2f}** ({span(store, 'w3_p50_ms', '.2f')}) "
            f"| {med(store, 'w3_p99_ms'):.2f} |"
        )
    ratio = med("postgresql", "w1_rate") / med("sqlite", "w1_rate")
    gap = med("postgresql", "w3_p50_ms") - med("sqlite", "w3_p50_ms")
    lines += [
        "",
        f"W1 ratio postgresql / sqlite (medians): **{ratio:.2f}** (aim: at least 0.50). "
        f"W3 p50 difference: **{gap:+.2f} ms** (aim: within 1 ms).",
        "",
        "| take-over after SIGKILL of the active coordinator | leadership lease | "
        "kill to standby SERVING | of which restore and start |",
        "|---|---|---|---|",
    ]
    for i, r in enumerate(runs["postgresql"]):
        lines.append(
            f"| repetition {i + 1} | {r['lease_s']:g} s | **{r['takeover_s']:.2f} s** "
            f"| {r['restore_s']:.2f} s |"
        )
    lines += [
        "",
        "The take-over is bounded by the leadership lease (renewed at least every third "
        "of it, so it runs out 2/3 to 1 lease after the kill) + `leader_poll_s` (1 s) + "
        "the restore of the stored state (here the repetition's 100,000-item map: "
        "task runs and 300,000 events). Workers then find the new active coordinator "
        "within their retry backoff (at most 2 s).",
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "postgres_ratio.md").write_text(text)
    print(write_results(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
