"""TLS and token overhead on W1 and W3: a secured fleet against a plaintext one, same run.

    .venv/bin/python benchmarks/tls_overhead.py [--reps 5]

Starts the benchmark fleet (coordinator + 2 ``--cpu 1`` workers, this process
the client; ``ff_fleet.Fleet``) twice per repetition, alternating: plaintext,
then TLS with tokens (certificates from ``fleetflow_coordinator.pki``, the
worker and client each with their own token, every call authenticated). W1 is
the 10,000-item no-op map (task runs/s), W3 200 one-task flow round trips
(p50 and p99 ms). Writes the section between the ``tls-overhead`` markers in
``benchmarks/RESULTS.md`` (other sections are left alone; ``run.py`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH, OUT, ROOT, put_kept_section
from ff_fleet import Fleet, run_rep
from fleetflow import Credentials
from fleetflow_coordinator.auth import append_entry, new_token
from fleetflow_coordinator.pki import Authority

BEGIN = "<!-- kept:begin tls-overhead -->"
END = "<!-- kept:end -->"


def _num(x: float) -> str:
    """Four significant digits, never in exponent form: 10,290 (not 1.029e+04), 4.297, 46."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _pki(directory: Path) -> tuple[list[str], list[str], Credentials]:
    authority = Authority(directory)
    cert, key = authority.issue("coordinator", "coordinator", server=True)
    auth = directory / "auth.toml"
    auth.unlink(missing_ok=True)
    tokens = {}
    for role in ("worker", "client"):
        tokens[role] = new_token()
        append_entry(auth, roles=[role], token=tokens[role], name=f"bench-{role}")
    worker_token = directory / "worker.token"
    worker_token.write_text(tokens["worker"] + "\n")
    coordinator = ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-file", str(auth)]
    worker = ["--tls-ca", str(authority.ca_path), "--token-file", str(worker_token)]
    client = Credentials(tls_ca=str(authority.ca_path), token=tokens["client"])
    return coordinator, worker, client


def _measure(secure: tuple | None, tag: str) -> dict:
    fleet = Fleet(OUT, tag)
    try:
        if secure is None:
            fleet.start()
        else:
            coordinator, worker, client = secure
            fleet.start(coordinator_args=coordinator, worker_args=worker, credentials=client)
        w1 = run_rep(fleet, "W1", 10_000)
        w3 = run_rep(fleet, "W3", 200)
    finally:
        fleet.stop()
    return {
        "w1_per_s": 10_000 / w1["wall_s"],
        "w1_coordinator_us": w1["coordinator_cpu_s"] / 10_000 * 1e6,
        "w1_workers_us": w1["workers_cpu_s"] / 10_000 * 1e6,
        "w3_p50_ms": w3["p50_ms"],
        "w3_p99_ms": w3["p99_ms"],
        "w3_coordinator_us": w3["coordinator_cpu_s"] / 200 * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    secure = _pki(OUT / "tls-pki")
    started = time.time()
    runs: dict[str, list[dict]] = {"plaintext": [], "tls": []}
    for rep in range(args.reps):
        for name, config in (("plaintext", None), ("tls", secure)):
            result = _measure(config, f"tls-{name}")
            runs[name].append(result)
            print(f"rep {rep + 1} {name}: {json.dumps(result)}", flush=True)
    (OUT / "tls_overhead.json").write_text(json.dumps(runs, indent=1))

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def span(name: str, key: str) -> str:
        values = [r[key] for r in runs[name]]
        return f"{_num(min(values))}–{_num(max(values))}"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    rows = [
        ("W1-10k no-op map, task runs/s (higher is better)", "w1_per_s"),
        ("W1-10k coordinator CPU per task run, µs (lower is better)", "w1_coordinator_us"),
        ("W1-10k workers' CPU per task run, µs (lower is better)", "w1_workers_us"),
        ("W3 one-task flow round trip ×200, p50 ms (lower is better)", "w3_p50_ms"),
        ("W3 one-task flow round trip ×200, p99 ms (lower is better)", "w3_p99_ms"),
        ("W3 coordinator CPU per flow run, µs (lower is better)", "w3_coordinator_us"),
    ]
    lines = [
        BEGIN,
        "## TLS and token overhead",
        "",
        f"Command: `.venv/bin/python benchmarks/tls_overhead.py --reps {args.reps}` "
        f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC, fleetflow {commit}, "
        f"{platform.machine()}, {(time.time() - started) / 60:.1f} min). The fleetflow "
        "fleet of the table above, started alternately in plaintext and with TLS on every "
        "hop plus a token on every call (workers and client with tokens of their own; "
        "ECDSA P-256 certificates from `fleetflow certs`' CA code); medians (min–max) over "
        "the repetitions. Wall-clock rows move with the load of the machine (it was shared "
        "with other jobs); the CPU rows are steadier.",
        "",
        "| workload | plaintext | TLS + tokens | TLS / plaintext |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        plain, tls = med("plaintext", key), med("tls", key)
        lines.append(
            f"| {label} | **{_num(plain)}** ({span('plaintext', key)}) | "
            f"**{_num(tls)}** ({span('tls', key)}) | {tls / plain:.3f}× |"
        )
    lines.append(END)
    section = "\n".join(lines)
    put_kept_section(BENCH / "RESULTS.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
