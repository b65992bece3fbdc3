"""Profile fleetflow's W1 (no-op map) with py-spy: the coordinator and one worker.

    .venv/bin/python benchmarks/pyspy_w1.py [--n 10000] [--rate 250] [--native]
    .venv/bin/python benchmarks/pyspy_w1.py --w3 1000 --gil   # W3 instead: one-task flows

Starts a fleet as ``run.py`` does (coordinator + 2 workers, ``--cpu 1``),
attaches ``py-spy record`` to the coordinator and to worker 0 (with
``--subprocesses``, so its pool process is sampled too), runs one W1 map,
stops py-spy, and prints the functions with the most own time (leaf samples)
and most total time per process. Raw collapsed stacks (``flamegraph.pl`` or
speedscope read them) go to ``benchmarks/out/profile/``; the reading of them
is in ``benchmarks/PROFILE.md``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ff_tasks
from common import OUT, stop_all
from ff_fleet import Fleet

PROFILE = OUT / "profile"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: one entry per function."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    marker = "site-packages/"
    if marker in path:
        path = path.split(marker, 1)[1]
    else:
        for root in ("/client/", "/coordinator/", "/worker/", "/benchmarks/", "python3.11/"):
            if root in path:
                path = path.split(root, 1)[1]
                break
    return f"{m.group('func')} ({path})"


def summarize(raw_path, top: int = 25) -> str:
    """Own and total sample counts per function (and per process, with --subprocesses)."""
    per_process: dict[str, tuple[collections.Counter, collections.Counter, list]] = {}
    for line in raw_path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        # A process frame is `process PID:"cmdline"`, and a cmdline may hold ';'.
        frames: list[str] = []
        for part in stack.split(";"):
            if frames and frames[-1].startswith("process ") and frames[-1].count('"') % 2:
                frames[-1] += ";" + part
            else:
                frames.append(part)
        proc = "process"
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        if procs:
            last = frames[procs[-1]]
            proc, _, cmd = last.partition(":")
            if "forkserver" in cmd or "multiprocessing" in cmd:
                proc += " (pool process)"
            elif "fleetflow_worker" in cmd:
                proc += " (worker main)"
            elif "fleetflow_coordinator" in cmd:
                proc += " (coordinator)"
            frames = [f for f in frames[procs[-1] + 1 :] if not f.startswith("process ")]
        # A thread frame ("thread (0x...)") may lead: drop it.
        frames = [f for f in frames if not f.startswith("thread (")]
        if not frames:
            continue
        own, total, totals = per_process.setdefault(
            proc, (collections.Counter(), collections.Counter(), [0])
        )
        shorts = [_short(f) for f in frames]
        own[shorts[-1]] += n
        for name in set(shorts):
            total[name] += n
        totals[0] += n
    out = []
    for proc, (own, total, totals) in sorted(per_process.items(), key=lambda kv: -kv[1][2][0]):
        all_samples = totals[0]
        out.append(f"### {proc}: {all_samples} active samples\n")
        out.append("| own % | own samples | function (file) |\n|---|---|---|")
        for name, n in own.most_common(top):
            out.append(f"| {100 * n / all_samples:.1f} | {n} | `{name}` |")
        out.append("\n| total % | function (file) |\n|---|---|")
        for name, n in total.most_common(top):
            out.append(f"| {100 * n / all_samples:.1f} | `{name}` |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--native", action="store_true", help="also sample C/C++ frames")
    parser.add_argument("--gil", action="store_true", help="only sample the thread holding the GIL")
    parser.add_argument("--summarize", metavar="DIR", help="only summarize DIR/*.raw again")
    parser.add_argument("--w3", type=int, default=0, help="run this many one-task flows (W3) "
                        "in sequence instead of the W1 map")  # fmt: skip
    args = parser.parse_args()
    if args.summarize:
        for name in ("coordinator", "worker"):
            print(f"## {name}\n")
            print(summarize(Path(args.summarize) / f"{name}.raw"))
        return 0
    pyspy = shutil.which("py-spy") or str(OUT.parent.parent / ".venv" / "bin" / "py-spy")
    shutil.rmtree(PROFILE, ignore_errors=True)
    PROFILE.mkdir(parents=True)
    fleet = Fleet(PROFILE, "fleet")
    spies: list[subprocess.Popen] = []
    try:
        print(fleet.start())
        targets = {
            "coordinator": (fleet.coordinator.pid, []),
            "worker": (fleet.workers[0].pid, ["--subprocesses"]),
        }
        for name, (pid, extra) in targets.items():
            cmd = [
                pyspy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "-o",
                str(PROFILE / f"{name}.raw"),
                *extra,
                *(["--native"] if args.native else ["--nonblocking"]),
                *(["--gil"] if args.gil else []),
            ]
            with open(PROFILE / f"{name}.pyspy.log", "wb") as err:
                spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err))
        time.sleep(2.0)  # samplers attached
        t0 = time.perf_counter()
        if args.w3:
            for i in range(args.w3):
                assert fleet.client.submit(ff_tasks.w3_one, x=i).result(timeout=60) == i + 1
            wall = time.perf_counter() - t0
            print(f"W3 x {args.w3}: {wall / args.w3 * 1000:.2f} ms per flow run (under py-spy)")
        else:
            result = fleet.client.submit(ff_tasks.w1_map, n=args.n).result(timeout=600)
            wall = time.perf_counter() - t0
            assert result == list(range(1, args.n + 1))
            print(f"W1 {args.n}: {wall:.2f} s, {args.n / wall:.0f} task runs/s (under py-spy)")
        time.sleep(0.5)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        fleet.stop()
        stop_all()
    what = f"W3 x {args.w3:,}" if args.w3 else f"W1 at {args.n:,} items"
    report = [
        f"{what}: {wall:.2f} s wall under py-spy ({args.rate} Hz, "
        f"{'native' if args.native else 'Python'} frames, "
        f"{'GIL holder only' if args.gil else 'idle samples excluded'})\n"
    ]
    for name in ("coordinator", "worker"):
        raw = PROFILE / f"{name}.raw"
        if raw.exists():
            report.append(f"## {name}\n")
            report.append(summarize(raw))
        else:
            report.append(f"## {name}: no profile written (see {name}.pyspy.log)\n")
    text = "\n".join(report)
    (PROFILE / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
