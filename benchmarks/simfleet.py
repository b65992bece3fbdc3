"""Simulated fleetflow workers for W6: many light agents in one process.

Each agent speaks the real ``WorkerService`` protocol over its own gRPC
connection: ``RegisterWorker``, then ``Heartbeat`` at the interval the
coordinator answers with (1 s by default), registering again if told it is
unknown. Agents never call ``LeaseTasks``, so no work is leased to them; they
are the idle part of a large fleet. The process runs until SIGTERM/SIGINT or
``--max-seconds`` (bounded), then writes its statistics as JSON::

    python benchmarks/simfleet.py --coordinator 127.0.0.1:PORT --agents 50 \
        --prefix sim0 --status-file s.json --out stats.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import time
from pathlib import Path

import grpc
import grpc.aio
from fleetflow.api.v1 import common_pb2, worker_service_pb2, worker_service_pb2_grpc


class Stats:
    def __init__(self) -> None:
        self.registered: set[str] = set()
        self.heartbeats_ok = 0
        self.heartbeat_errors = 0
        self.register_errors = 0
        self.reregistrations = 0
        #: (monotonic time of the reply, latency ms)
        self.latencies: list[tuple[float, float]] = []


async def agent(
    name: str, address: str, task_names: list[str], stats: Stats, stop: asyncio.Event
) -> None:
    # A subchannel pool of its own: every agent gets its own TCP connection,
    # as separate worker processes would.
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
    register = worker_service_pb2.RegisterWorkerRequest(
        worker_id=name,
        capacity=common_pb2.Resources(amounts={"cpu": 1.0, "memory": float(2**30)}),
        task_names=task_names,
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    interval = 1.0
    try:
        await asyncio.sleep(random.uniform(0, 1.0))  # a real fleet is not in lockstep
        while not stop.is_set():
            try:
                reply = await stub.RegisterWorker(register, timeout=10)
            except grpc.aio.AioRpcError:
                stats.register_errors += 1
                await asyncio.sleep(0.5)
                continue
            interval = reply.heartbeat_interval_seconds or 1.0
            if name in stats.registered:
                stats.reregistrations += 1
            stats.registered.add(name)
            known = True
            while known and not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
                request = worker_service_pb2.HeartbeatRequest(
                    worker_id=name, cpu_percent=1.0, memory_available=float(2**30)
                )
                t0 = time.monotonic()
                try:
                    reply = await stub.Heartbeat(request, timeout=5)
                except grpc.aio.AioRpcError:
                    stats.heartbeat_errors += 1
                    continue
                t1 = time.monotonic()
                stats.heartbeats_ok += 1
                stats.latencies.append((t1, (t1 - t0) * 1000))
                known = reply.known
    finally:
        await channel.close()


async def main(args: argparse.Namespace) -> Stats:
    stats = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(args.max_seconds, stop.set)
    task_names = [t for t in args.task_names.split(",") if t]
    agents = [
        asyncio.create_task(agent(f"{args.prefix}-{i}", args.coordinator, task_names, stats, stop))
        for i in range(args.agents)
    ]
    status = Path(args.status_file)
    while not stop.is_set():
        tmp = status.with_name(status.name + ".tmp")
        tmp.write_text(json.dumps({"registered": len(stats.registered), "ok": stats.heartbeats_ok}))
        os.replace(tmp, status)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
    await asyncio.wait_for(asyncio.gather(*agents, return_exceptions=True), 15)
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--task-names", default="")
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    ns = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(main(ns))
    except ImportError:
        result = asyncio.run(main(ns))
    Path(ns.out).write_text(
        json.dumps(
            {
                "registered": len(result.registered),
                "heartbeats_ok": result.heartbeats_ok,
                "heartbeat_errors": result.heartbeat_errors,
                "register_errors": result.register_errors,
                "reregistrations": result.reregistrations,
                "latencies": result.latencies,
            }
        )
    )
