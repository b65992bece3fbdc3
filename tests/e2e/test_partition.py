"""Network partitions cut with a real link, not simulated with SIGSTOP.

Each test builds a network namespace ``ffpart-<pid>-<n>`` joined to the root
namespace by a veth pair (host side ``10.213.X.1/30``, namespace side
``10.213.X.2/30``). The coordinator listens on ``10.213.X.1`` in the root
namespace; one worker runs inside the namespace (``ip netns exec``) and
another in the root namespace, both dialling ``10.213.X.1``. Traffic stays on
loopback and on that veth pair.

**How the link is cut.** The namespace side of the veth is set down, from
inside the namespace. Packets the coordinator sends to the worker are then
dropped by the veth (its peer is down; the host side shows NO-CARRIER) and the
worker's own sends find no route: nothing crosses, and neither process is told
(no RST, no FIN), exactly like a pulled cable. The host side is deliberately
left up: setting *it* down would delete the connected /30 route in the root
namespace, and the coordinator's packets for ``10.213.X.2`` would then follow
the default route out of the machine. As a second guard a high-metric
``unreachable 10.213.X.0/30`` route is installed for the test's lifetime, so
even then nothing for the namespace leaves through another interface. Setting
the namespace side up again heals the link; the TCP connections that were open
are still there and resume when the next retransmission gets through.

Needs root (``ip netns add``); skipped otherwise.
"""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fleetflow import Client
from fleetflow.loader import load_module

from .fleet import Fleet, Proc, late_results, wait_until

FLOWS = Path(__file__).resolve().parent / "partition_flows.py"
flows = load_module(str(FLOWS))

pytestmark = pytest.mark.slow

LEASE_TTL = 2.0
HEARTBEAT = 0.5
#: Metric of the guard route; the kernel's connected route (metric 0) wins while it exists.
GUARD_METRIC = 4242
#: The worker's LeaseTasks long poll (WorkerSettings.lease_wait_s), seconds.
LONG_POLL = 5.0

_serial = itertools.count(1)


# ----------------------------------------------------------------- the link


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _free_subnet() -> int:
    """A third octet X with no 10.213.X.* address or route on this machine."""
    used = (
        _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    )
    start = os.getpid() % 250
    for k in range(250):
        x = (start + k) % 250 + 1
        if f"10.213.{x}." not in used:
            return x
    raise RuntimeError("no free 10.213.X.0/30 subnet")


@dataclass
class Link:
    """A namespace and the veth pair joining it to the root namespace."""

    netns: str
    host_if: str
    ns_if: str
    subnet: str
    host_ip: str
    ns_ip: str
    is_cut: bool = False

    @classmethod
    def create(cls) -> Link:
        """Build the namespace and veth pair; pytest.skip when that is not possible."""
        if os.geteuid() != 0:
            pytest.skip("network namespaces need root")
        if shutil.which("ip") is None:
            pytest.skip("iproute2 ('ip') is not installed")
        n = next(_serial)
        pid = os.getpid()
        x = _free_subnet()
        link = cls(
            netns=f"ffpart-{pid}-{n}",
            host_if=f"ffh{pid % 10**7}n{n}",
            ns_if=f"ffn{pid % 10**7}n{n}",
            subnet=f"10.213.{x}.0/30",
            host_ip=f"10.213.{x}.1",
            ns_ip=f"10.213.{x}.2",
        )
        added = _ip("netns", "add", link.netns, check=False)
        if added.returncode != 0:
            pytest.skip(f"'ip netns add' failed: {added.stderr.strip()}")
        try:
            _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
            _ip("link", "set", link.ns_if, "netns", link.netns)
            _ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
            _ip("link", "set", link.host_if, "up")
            _ip("route", "add", "unreachable", link.subnet, "metric", str(GUARD_METRIC))
            _ip("-n", link.netns, "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
            _ip("-n", link.netns, "link", "set", "lo", "up")
            _ip("-n", link.netns, "link", "set", link.ns_if, "up")
        except Exception as exc:
            link.destroy()
            pytest.skip(f"could not build the veth pair: {exc}")
        return link

    def _route_from_host(self) -> str:
        return _ip("-4", "route", "get", self.ns_ip, check=False).stdout

    def cut(self) -> None:
        """Drop every packet between the namespace and the root namespace."""
        self.is_cut = True
        _ip("-n", self.netns, "link", "set", self.ns_if, "down")
        route = self._route_from_host()
        # Still the (now carrier-less) veth or the guard: never another interface.
        assert f"dev {self.host_if}" in route or route == "", route
        assert "NO-CARRIER" in _ip("link", "show", self.host_if).stdout

    def heal(self) -> None:
        """Reconnect the namespace."""
        _ip("-n", self.netns, "link", "set", self.ns_if, "up")
        self.is_cut = False
        wait_until(
            lambda: (
                "LOWER_UP" in _ip("link", "show", self.host_if).stdout
                and self.subnet in _ip("-n", self.netns, "-4", "route", "show").stdout
            ),
            10,
            what="the veth pair to come back up",
        )

    def ns_inode(self) -> int:
        """Inode of the namespace (what ``/proc/PID/ns/net`` shows for processes in it)."""
        return os.stat(f"/run/netns/{self.netns}").st_ino

    def destroy(self) -> None:
        """Remove the veth pair, the guard route and the namespace (never raises)."""
        _ip("link", "del", self.host_if, check=False)  # takes its peer with it
        _ip("route", "del", "unreachable", self.subnet, "metric", str(GUARD_METRIC), check=False)
        _ip("netns", "del", self.netns, check=False)

    def leftovers(self) -> list[str]:
        """Whatever of this link still exists (empty after :meth:`destroy`)."""
        found = []
        if self.netns in _ip("netns", "list", check=False).stdout.split():
            found.append(f"netns {self.netns}")
        links = _ip("-o", "link", "show", check=False).stdout
        found += [f"link {name}" for name in (self.host_if, self.ns_if) if f" {name}@" in links]
        routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
        if self.subnet in routes:
            found.append(f"route {self.subnet}")
        return found


# ---------------------------------------------------------------- the fleet


@dataclass
class Island:
    """A coordinator, a worker inside the namespace and one outside it."""

    fleet: Fleet
    link: Link
    address: str
    ns_worker_id: str
    root_worker_id: str
    ns_worker: Proc
    root_worker: Proc


def _start_coordinator(fleet: Fleet, link: Link) -> str:
    port_file = fleet.tmp / "partition-port"
    proc = Proc(
        [
            sys.executable,
            "-m",
            "fleetflow_coordinator",
            "--listen",
            f"{link.host_ip}:0",
            "--port-file",
            str(port_file),
            "--lease-ttl",
            str(LEASE_TTL),
            "--heartbeat-interval",
            str(HEARTBEAT),
            "--db",
            str(fleet.tmp / "fleetflow.db"),
            "--http",
            "off",
            "--insecure",  # a link in a network namespace this test made, nothing else
        ],
        fleet.tmp / "coordinator.log",
    )
    fleet.procs.append(proc)
    fleet.coordinator = proc
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"coordinator did not start:\n{proc.log()}")
        time.sleep(0.05)
    fleet.address = f"{link.host_ip}:{port_file.read_text().strip()}"
    return fleet.address


def _worker_args(address: str, worker_id: str, *pools: str) -> list[str]:
    args = [sys.executable, "-m", "fleetflow_worker", "--coordinator", address]
    args += ["--module", str(FLOWS), "--cpu", "2", "--worker-id", worker_id]
    for pool in pools:
        args += ["--pool", pool]
    return args


def _worker_ids(client: Client) -> set[str]:
    return {w.worker_id for w in client.list_workers()}


@pytest.fixture
def island(fleet, tmp_path):
    link = Link.create()
    ns_worker = None
    try:
        address = _start_coordinator(fleet, link)
        tag = f"{os.getpid()}-{link.netns.rsplit('-', 1)[1]}"
        ns_id, root_id = f"ns-{tag}", f"root-{tag}"
        ns_worker = Proc(
            ["ip", "netns", "exec", link.netns, *_worker_args(address, ns_id, "default", "island")],
            fleet.tmp / "worker-ns.log",
        )
        fleet.procs.append(ns_worker)
        fleet.workers.append(ns_worker)
        root_worker = Proc(
            _worker_args(address, root_id, "default", "mainland"), fleet.tmp / "worker-root.log"
        )
        fleet.procs.append(root_worker)
        fleet.workers.append(root_worker)
        with Client(address) as client:
            wait_until(
                lambda: {ns_id, root_id} <= _worker_ids(client), 30, what="both workers to register"
            )
        yield Island(fleet, link, address, ns_id, root_id, ns_worker, root_worker)
    finally:
        if link.is_cut and ns_worker is not None:
            # Cut off, it would spend its whole drain trying to flush outcomes.
            ns_worker.kill(signal.SIGKILL)
        fleet.stop()
        link.destroy()
        left = link.leftovers()
        assert not left, f"network objects left behind: {left}"


# ------------------------------------------------------------------- ledgers


@dataclass(frozen=True)
class Stamp:
    """One ledger line written by a task attempt (see partition_flows.py)."""

    phase: str
    item: int
    task_run_id: int
    attempt: int
    worker_id: str
    pid: int
    netns: int
    time: float


def _stamps(path: Path) -> list[Stamp]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        phase, item, trid, attempt, worker, pid, netns, at = line.split()
        out.append(
            Stamp(
                phase, int(item), int(trid), int(attempt), worker, int(pid), int(netns), float(at)
            )
        )
    return out


def _events(client: Client, flow_run_id: str) -> list:
    """Every stored event, including those after the terminal one.

    ``Client.watch`` stops at the terminal event, but a late result is rejected
    (and recorded) after the flow run has ended, so this reads the raw stream,
    which the coordinator ends once it has sent every stored event.
    """
    import grpc
    from fleetflow.api.v1 import coordinator_service_pb2 as pb
    from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
    from fleetflow.events import FlowEvent

    with grpc.insecure_channel(client.address) as channel:
        stub = pb_grpc.CoordinatorServiceStub(channel)
        stream = stub.WatchFlowRun(pb.WatchFlowRunRequest(flow_run_id=flow_run_id), timeout=10)
        return [FlowEvent.from_proto(e) for batch in stream for e in batch.events]


def _events_so_far(client: Client, flow_run_id: str, wait_s: float = 1.0) -> list:
    """The stored events of a flow run that may still be running (the stream blocks)."""
    import grpc
    from fleetflow.api.v1 import coordinator_service_pb2 as pb
    from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc
    from fleetflow.events import FlowEvent

    request = pb.WatchFlowRunRequest(flow_run_id=flow_run_id)
    events = []
    try:
        with grpc.insecure_channel(client.address) as channel:
            stub = pb_grpc.CoordinatorServiceStub(channel)
            for batch in stub.WatchFlowRun(request, timeout=wait_s):
                events += [FlowEvent.from_proto(e) for e in batch.events]
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return events


def _value(x: int) -> int:
    return 1000 + 7 * x


# --------------------------------------------------------------------- tests


def test_partitioned_worker_loses_its_leases_and_its_late_results_are_fenced(island, tmp_path):
    """Cut the link under a worker that is running map items, then heal it.

    What the at-least-once semantics of docs/architecture.md allow, and no more:

    * An item whose attempt was leased to the partitioned worker when the link
      went down may run **twice**: attempt *n* on the partitioned worker (which
      cannot know it lost the lease and finishes the task code) and attempt
      *n+1* on the other worker after the coordinator declared the lease lost
      ("worker silent past the lease TTL" -> ``SCHEDULED`` as attempt *n+1*).
      Worker loss uses the infrastructure budget, so one loss never fails it.
    * Nothing else runs twice, no attempt number runs twice, and only the
      current attempt's outcome counts: the partitioned worker's outcome for
      attempt *n*, delivered once the link is back, is fenced
      (``REJECTED_STALE``; the run has ended by then, so the coordinator logs
      it instead of appending a ``LATE_RESULT_REJECTED`` event after the end)
      and changes nothing. Each task run completes exactly once and the flow's result holds
      each item's value exactly once.
    """
    client_address, link = island.address, island.link
    ns_id, root_id = island.ns_worker_id, island.root_worker_id
    ledger = tmp_path / "ledger"
    n = 20

    def ns_in_flight() -> bool:
        stamps = _stamps(ledger)
        ended = {(s.task_run_id, s.attempt) for s in stamps if s.phase == "end"}
        now = time.time()
        starts = [s for s in stamps if s.phase == "start" and s.worker_id == ns_id]
        fresh = [
            s for s in starts if (s.task_run_id, s.attempt) not in ended and now - s.time < 0.5
        ]
        return len(starts) >= 2 and bool(fresh)  # one started < 0.5 s ago: it outlives the cut

    with Client(client_address) as client:
        run = client.submit(flows.partition_map, n=n, ledger=str(ledger), seconds=1.0)
        wait_until(ns_in_flight, 30, interval=0.02, what="the namespaced worker to be mid-task")
        cut_at = time.time()
        link.cut()

        wait_until(
            lambda: ns_id not in _worker_ids(client),
            LEASE_TTL + 10,
            what="the coordinator to declare the partitioned worker lost",
        )
        assert root_id in _worker_ids(client)
        assert run.result(timeout=60) == [_value(x) for x in range(n)]
        done = client.get(run.id)
        assert done.state == "COMPLETED"

        heal_at = time.time()
        link.heal()

        before = _stamps(ledger)
        events = _events(client, run.id)
        started = {(e.task_run_id, e.attempt): e for e in events if e.kind == "TASK_RUN_STARTED"}
        completed = [e for e in events if e.kind == "TASK_RUN_COMPLETED"]
        completing = {e.task_run_id: e.attempt for e in completed}
        index_of = {
            e.task_run_id: e.index
            for e in started.values()
            if e.task_name == "partition_flows:part_item"
        }

        # The lease was declared lost after the TTL (not before; allow one missed
        # heartbeat interval of silence before the cut), and only for that worker.
        expired = [e for e in events if e.kind == "TASK_RUN_LEASE_EXPIRED"]
        assert expired, "no lease of the partitioned worker expired"
        for e in expired:
            assert started[(e.task_run_id, e.attempt)].worker_id == ns_id
            assert "no heartbeat within the TTL" in e.message, e.message
            # Within the TTL (plus slack for a loaded machine) of the last heartbeat.
            assert cut_at + LEASE_TTL - 2 * HEARTBEAT <= e.time <= cut_at + LEASE_TTL + 2, (
                f"lease expired {e.time - cut_at:.2f} s after the cut (TTL {LEASE_TTL} s)"
            )
            # ... and re-queued at once as the next attempt (it then waits its turn
            # in the node's queue), which the other worker ran.
            (requeued,) = [
                s
                for s in events
                if s.kind == "TASK_RUN_SCHEDULED"
                and (s.task_run_id, s.attempt) == (e.task_run_id, e.attempt + 1)
            ]
            assert requeued.time - e.time < 0.5
            retry = started.get((e.task_run_id, e.attempt + 1))
            assert retry is not None and retry.worker_id == root_id, retry
            assert completing[e.task_run_id] == e.attempt + 1

        # Every task run completed exactly once; the result held each value once.
        assert collections.Counter(e.task_run_id for e in completed) == collections.Counter(
            {trid: 1 for trid in completing}
        )
        assert len(completing) == n + 1  # the items and the fan-in
        assert sorted(index_of.values()) == list(range(n))

        # Ledger: the work really ran on both sides of the link.
        ns_inode = link.ns_inode()
        starts = [s for s in before if s.phase == "start"]
        assert {s.item for s in starts} == set(range(n))
        for s in starts:
            assert s.worker_id in (ns_id, root_id), s
            assert (s.netns == ns_inode) == (s.worker_id == ns_id), s
        assert any(s.worker_id == ns_id for s in starts) and any(
            s.worker_id == root_id for s in starts
        )
        # No attempt number ran twice (the fencing token is never reused) ...
        attempts = collections.Counter((s.task_run_id, s.attempt) for s in starts)
        assert max(attempts.values()) == 1, attempts.most_common(3)
        # ... and only items whose lease was lost ran more than once, at most twice.
        runs_per_item = collections.Counter(s.item for s in starts)
        lost_items = {index_of[e.task_run_id] for e in expired}
        twice = {item for item, count in runs_per_item.items() if count > 1}
        assert twice <= lost_items, (twice, lost_items)
        assert max(runs_per_item.values()) <= 2

        # Attempts the partitioned worker finished while cut off: their outcomes
        # were queued on the worker and must all be delivered and rejected.
        stale = {
            (s.task_run_id, s.attempt)
            for s in before
            if s.phase == "end"
            and s.worker_id == ns_id
            and s.time < heal_at
            and completing.get(s.task_run_id) != s.attempt
        }
        assert stale, "the partitioned worker finished nothing while cut off"

        def rejected() -> dict:
            late = late_results(island.fleet.coordinator, run.id)
            found = {(e["task_run_id"], e["attempt"]): e for e in late}
            return found if stale <= set(found) else {}

        late = wait_until(rejected, 30, interval=0.2, what="the late results to be rejected")
        reconnected_s = time.time() - heal_at
        for (trid, attempt), e in late.items():
            assert e["worker_id"] == ns_id, e
            assert attempt != completing[trid], e
            assert f"attempt {attempt} is not current" in e["message"], e["message"]

        # The late results changed nothing, and nothing follows the terminal event.
        after = _events(client, run.id)
        assert [e for e in after if e.kind == "TASK_RUN_COMPLETED"] == completed
        assert after[len(events) :] == [] and after[-1].kind == "FLOW_RUN_COMPLETED"
        assert client.get(run.id).state == "COMPLETED"
        assert run.result(timeout=10) == [_value(x) for x in range(n)]
    print(
        f"lease declared lost {max(e.time for e in expired) - cut_at:.2f} s after the cut; "
        f"late results rejected {reconnected_s:.2f} s after the link healed; "
        f"stale attempts {sorted(stale)}"
    )
    assert island.ns_worker.alive() and island.root_worker.alive()


def test_healed_worker_registers_again_and_takes_new_work(island, tmp_path):
    """After the link heals, the partitioned worker registers again and works.

    Its ``island`` pool tasks have nowhere else to go: while the link is down
    their re-queued attempts wait; once it is back, the same worker (asked to
    register again because the coordinator forgot it) runs them as the next
    attempt, and a new flow run submitted afterwards runs there too, inside
    the namespace.
    """
    link = island.link
    ns_id, root_id = island.ns_worker_id, island.root_worker_id
    first, second = tmp_path / "first", tmp_path / "second"
    with Client(island.address) as client:
        run = client.submit(flows.island_map, n=2, ledger=str(first), seconds=1.0)
        wait_until(
            lambda: len([s for s in _stamps(first) if s.phase == "start"]) == 2,
            30,
            interval=0.02,
            what="both island items to start",
        )
        link.cut()
        wait_until(
            lambda: ns_id not in _worker_ids(client), LEASE_TTL + 10, what="the worker to be lost"
        )
        # Re-queued as attempt 2, but no connected worker serves the pool.
        wait_until(
            lambda: client.get(run.id).nodes[0].scheduled == 2, 10, what="the items to re-queue"
        )
        time.sleep(0.5)
        assert client.get(run.id).state == "RUNNING"
        assert _worker_ids(client) == {root_id}

        healed = time.monotonic()
        link.heal()
        wait_until(lambda: ns_id in _worker_ids(client), 30, interval=0.1, what="re-registration")
        registered_s = time.monotonic() - healed
        assert run.result(timeout=30) == [_value(0), _value(1)]

        again = client.submit(flows.island_map, n=3, ledger=str(second), seconds=0.1)
        assert again.result(timeout=30) == [_value(x) for x in range(3)]

        events = _events(client, run.id)
        starts = [e for e in events if e.kind == "TASK_RUN_STARTED"]
        assert sorted((e.index, e.attempt) for e in starts) == [(0, 1), (0, 2), (1, 1), (1, 2)]
        assert {e.worker_id for e in starts} == {ns_id}
        late = [e for e in events if e.kind == "LATE_RESULT_REJECTED"]
        assert {(e.index, e.attempt) for e in late} == {(0, 1), (1, 1)}
        again_starts = [e for e in _events(client, again.id) if e.kind == "TASK_RUN_STARTED"]
        assert {e.worker_id for e in again_starts} == {ns_id}

    ns_inode = link.ns_inode()
    stamps = _stamps(first) + _stamps(second)
    assert stamps and all(s.worker_id == ns_id and s.netns == ns_inode for s in stamps)
    assert sorted(s.item for s in _stamps(second) if s.phase == "start") == [0, 1, 2]
    log = island.ns_worker.log()
    assert "worker_unknown_to_coordinator" in log
    assert "registrations=2" in log or '"registrations": 2' in log, log[-3000:]
    print(f"worker registered again {registered_s:.2f} s after the link healed")
    assert island.ns_worker.alive() and island.root_worker.alive()


def test_a_pending_long_poll_does_not_keep_a_silent_worker_alive(island, tmp_path):
    """docs/architecture.md, "Worker loss": a worker silent past the lease TTL is
    declared lost; its task runs become new attempts within the TTL plus one 50 ms
    tick. "Silent" means nothing arrives from it: a long poll it sent before the
    link was cut is no sign of life after the cut.

    Set-up: one ``island`` item (cpu 1) on the namespaced worker (cpu 2). The
    moment its lease arrives the worker still has a free slot, so its lease
    loop at once sends the next LeaseTasks, which waits on the coordinator for
    up to 5 s. The link is cut right after the item starts. Then the other
    worker runs short ``mainland`` items (a pool the namespaced worker does not
    serve, so none can be granted to it): each of their outcomes wakes every
    pending long poll, the dead worker's too.
    """
    link, ns_id = island.link, island.ns_worker_id
    ledger, busy = tmp_path / "ledger", tmp_path / "busy"
    with Client(island.address) as client:
        run = client.submit(flows.island_map, n=1, ledger=str(ledger), seconds=1.0)
        wait_until(lambda: _stamps(ledger), 30, interval=0.02, what="the item to start")
        cut_at = time.time()
        link.cut()
        other = client.submit(flows.mainland_map, n=40, ledger=str(busy), seconds=0.2)
        wait_until(
            lambda: ns_id not in _worker_ids(client),
            LEASE_TTL + LONG_POLL + 5,
            interval=0.05,
            what="the partitioned worker to be declared lost",
        )
        lost_after = time.time() - cut_at
        (expired,) = [
            e for e in _events_so_far(client, run.id) if e.kind == "TASK_RUN_LEASE_EXPIRED"
        ]
        assert other.result(timeout=30) == [_value(x) for x in range(40)]
    print(f"lease declared lost {expired.time - cut_at:.2f} s after the cut (TTL {LEASE_TTL} s)")
    assert expired.time - cut_at <= LEASE_TTL + 1.0, (
        f"the partitioned worker's lease was declared lost {expired.time - cut_at:.2f} s "
        f"after the cut (worker gone from ListWorkers after {lost_after:.2f} s); "
        f"the lease TTL is {LEASE_TTL} s"
    )
