"""Review of lease batches, the compact event log, one-row expansions and the serde fast path.

Pool tests use the worker's sample tasks (tests/worker/sample_tasks.py). Two of them
widen one real race window (the worker loop stalled between deciding to kill a batch's
process and killing it) by making the blocking /proc read in that window slow; the same
loss happens without the stall, just rarely (about 1 run in 30 with 1 ms members).
"""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path

import cloudpickle
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.serde import dumps
from fleetflow_coordinator.core import Outcome, Scheduler, TaskRunState
from fleetflow_coordinator.core.model import (
    TERMINAL_TASK_STATES,
    EventKind,
    EventLog,
    EventRecord,
)
from fleetflow_coordinator.store import MemoryStore
from fleetflow_worker import _usage
from fleetflow_worker._pool import BatchItem, PoolResult, TaskProcessPool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import mapnode, plain, restart, spec_of, submit

SAMPLE_TASKS = str(Path(__file__).parents[1] / "worker" / "sample_tasks.py")


# --------------------------------------------------------------------------- worker pool


@pytest.fixture
async def pool():
    pool = TaskProcessPool(1, [SAMPLE_TASKS])
    await pool.start()
    yield pool
    pool.kill()
    await pool.close()


@pytest.fixture
def slow_kill_path(monkeypatch):
    """Stall the loop for 0.1 s between a kill decision and the SIGKILL (as a busy host can)."""
    original = _usage.ProcessMeter.sample

    def sample(self, *, high_water_mark: bool = False) -> float:
        if high_water_mark:  # only taken on the kill path, right before _replace()
            time.sleep(0.1)
        return original(self, high_water_mark=high_water_mark)

    monkeypatch.setattr(_usage.ProcessMeter, "sample", sample)


def _sleeps(*seconds: float) -> list[BatchItem]:
    return [BatchItem([("seconds", dumps(s))], False, {}) for s in seconds]


async def test_cancelling_a_member_never_drops_the_member_after_it(pool, slow_kill_path):
    """_batch.py BatchPass: the member to blame is re-read from the progress array *after*
    the kill (``position, _ = proc.current()``), not the one the decision was about. If
    the cancelled member ends and the next one starts in between, the next one becomes
    ``current``: with error == _CANCELLED it gets no result, and it is also left out of
    the members returned to run again (``q != current``). The worker then finishes it
    with no outcome; the coordinator only notices a lease TTL later ("lease lost in
    transit") and counts an infrastructure failure.
    """
    cancelled: set[int] = set()
    poke = asyncio.Event()
    results: dict[int, PoolResult] = {}

    async def cancel_member_0() -> None:
        await asyncio.sleep(0.1)  # member 0 (0.11 s) is running
        cancelled.add(0)
        poke.set()

    canceller = asyncio.create_task(cancel_member_0())
    await pool.run_batch(
        "sample_tasks:sleep_sync",
        _sleeps(0.11, 0.3, 0.0),
        cancelled=cancelled.__contains__,
        on_result=results.__setitem__,
        poke=poke,
    )
    await canceller
    assert sorted(results) == [1, 2], "member 1 was never cancelled: it must end with a result"


async def test_a_timeout_is_charged_to_the_member_that_ran_past_it(pool, slow_kill_path):
    """Same mechanism for a timeout: member 0 ran past 0.2 s and is decided to be timed
    out; if it ends before the SIGKILL lands, member 1 (0.15 s, within its timeout) must
    not be the one reported ``timed_out`` (it runs again in the new process).
    """
    results: dict[int, PoolResult] = {}
    await pool.run_batch(
        "sample_tasks:sleep_sync",
        _sleeps(0.22, 0.15, 0.0),
        timeout_s=0.2,
        cancelled=lambda i: False,
        on_result=results.__setitem__,
    )
    assert sorted(results) == [0, 1, 2]
    # Member 1 stayed within its timeout: it is never the one blamed. Member 0 is
    # timed out, or (its result arrived before the SIGKILL landed) completed.
    assert not results[1].timed_out and not results[2].timed_out
    assert results[0].timed_out or results[0].payload[0] == "value"


async def test_probe_member_that_kills_its_process_after_others_is_blamed_alone(pool):
    results: dict[int, PoolResult] = {}
    items = [BatchItem([("x", dumps(x))], False, {}) for x in (1, 2, -7, 3)]
    await pool.run_batch(
        "sample_tasks:double_or_die",
        items,
        cancelled=lambda i: False,
        on_result=results.__setitem__,
    )
    assert sorted(results) == [0, 1, 2, 3]
    assert [results[i].infrastructure for i in range(4)] == [False, False, True, False]


# ----------------------------------------------------------------------------- event log


def _plain(seq: int, kind: int, time_: float, node: int, tr: int, index: int, attempt: int, w: str):
    return EventRecord(seq, EventKind(kind), time_, node, f"t{node}", tr, index, attempt, w)


event_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("plain"),
            st.sampled_from([6, 7, 8]),  # SCHEDULED/STARTED/COMPLETED-ish kinds
            st.sampled_from([1.0, 2.0]),
            st.integers(0, 1),
            st.integers(0, 2),  # task run id step from the previous one
            st.integers(0, 2),  # index step
            st.integers(1, 2),
            st.sampled_from(["", "w"]),
        ),
        st.tuples(st.just("full"), st.text(max_size=2)),
        st.tuples(st.just("range"), st.integers(0, 5), st.sampled_from([1.0, 2.0])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(event_steps)
def test_probe_event_log_reads_back_exactly_what_was_appended(plan):
    log, expected = EventLog(), []
    tr = index = 1
    for step in plan:
        seq = len(expected) + 1
        if step[0] == "plain":
            _, kind, t, node, dtr, didx, attempt, w = step
            tr, index = tr + dtr, index + didx
            event = _plain(seq, kind, t, node, tr, index, attempt, w)
            log.append(event)
            expected.append(event)
        elif step[0] == "full":
            event = EventRecord(seq, EventKind.TASK_RUN_RETRYING, 1.0, message=step[1] or "m")
            log.append(event)
            expected.append(event)
        else:
            _, count, t = step
            first = log.extend_scheduled(count, tr, t, 0, "t0")
            assert first == seq
            expected.extend(
                _plain(seq + i, EventKind.TASK_RUN_SCHEDULED, t, 0, tr + i, i, 1, "")
                for i in range(count)
            )
            tr += count
    assert len(log) == len(expected)
    assert list(log) == expected
    assert [e.seq for e in log] == list(range(1, len(expected) + 1))
    for i in range(len(expected)):
        assert log[i] == expected[i] and log[i - len(expected)] == expected[i]
    for a in range(0, len(expected) + 1, 3):
        for b in (a, a + 1, a + 7, len(expected)):
            assert log[a:b] == expected[a:b]
    assert log[::2] == expected[::2] and log[::-1] == expected[::-1]
    # The same events restored (as the store hands them back) read the same.
    assert list(EventLog(expected)) == expected


# ------------------------------------------------------- batches x restart x event log


ERR = common_pb2.TaskError(type="builtins.ValueError", message="x")
TASKS = ["src", "m1", "m2", "g", "lit"]


def _spec(n: int) -> common_pb2.FlowSpec:
    src = plain("src", n=n)
    m1 = mapnode("m1", x=("node", 0))
    m1.tags.append("tg")
    m2 = mapnode("m2", x=("node", 1))  # map of map: item dependencies
    m2.retry.CopyFrom(common_pb2.RetryPolicy(retries=1, retry_delay_seconds=2))
    g = plain("g", xs=("node", 2))
    lit = mapnode("lit", x=("items", list(range(12))))
    lit.tags.append("tg")
    return spec_of(src, m1, m2, g, lit, output_node=3)


def _outcome(g, how: str, n: int) -> Outcome:
    tr = g.task_run
    if how == "err":
        return Outcome(tr.id, g.attempt, error=ERR, duration_s=0.001)
    if how == "infra":
        return Outcome(tr.id, g.attempt, error=ERR, infrastructure=True)
    if tr.node.split:
        return Outcome(tr.id, g.attempt, items=[pickle.dumps(i) for i in range(n)])
    return Outcome(tr.id, g.attempt, value=pickle.dumps(1), duration_s=0.001)


batch_steps = st.lists(
    st.one_of(
        st.tuples(st.just("lease"), st.integers(0, 1), st.integers(1, 3), st.integers(1, 8)),
        st.tuples(st.just("finish"), st.integers(0, 1), st.sampled_from(["ok", "ok", "err"])),
        st.tuples(st.just("cancel_tr"), st.integers(0, 60)),
        st.tuples(st.just("tick"), st.floats(0.5, 3.0)),
        st.tuples(st.just("release"), st.integers(0, 1)),
        st.tuples(st.just("restart"), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 12), batch_steps)
def test_probe_batches_across_restarts_keep_events_states_and_balance(n, plan):
    """Batches (own durations reported) with cancels, retries, hand-backs and restarts
    with or without re-attach: the restored event log and task runs equal the live ones,
    and once everything ended no slot or allocation is left held."""
    now = 1000.0
    store = MemoryStore()
    kw = {"lease_ttl_s": 5.0, "concurrency_limits": {"tg": 2}}
    core = Scheduler(**kw)
    cpus = {"w0": 2.0, "w1": 3.0}
    for wid, cpu in cpus.items():
        core.register_worker(wid, {"cpu": cpu}, frozenset(TASKS), now)
    flow = submit(core, _spec(n), "f", now)
    held: dict[str, list] = {w: [] for w in cpus}
    for step in plan:
        kind = step[0]
        if kind == "lease":
            wid = f"w{step[1]}"
            held[wid].extend(core.lease(wid, step[2], now, max_batch=step[3]) or [])
        elif kind == "finish" and held[f"w{step[1]}"]:
            wid = f"w{step[1]}"
            core.report(wid, [_outcome(held[wid].pop(0), step[2], n)], now)
        elif kind == "cancel_tr":
            core.cancel_task_run(step[1] + 1, now)
        elif kind == "tick":
            now += step[1]
            for wid in core.workers:
                core.heartbeat(wid, [(g.task_run.id, g.attempt) for g in held[wid]], now)
            core.tick(now)
        elif kind == "release":
            wid = f"w{step[1]}"
            core.release_leases(wid, [(g.task_run.id, g.attempt) for g in held[wid]], now)
            held[wid] = []
        elif kind == "restart":
            events = list(flow.events)
            states = {tr.id: (tr.state, tr.attempt) for tr in core.task_runs.values()}
            core = restart(core, store, now, **kw)
            flow = core.flows["f"]
            assert list(flow.events) == events
            assert [e.seq for e in flow.events] == list(range(1, len(events) + 1))
            assert flow.durable_seq == len(events)
            assert {tr.id: (tr.state, tr.attempt) for tr in core.task_runs.values()} == states
            reattach = step[1]
            for wid, cpu in cpus.items():
                running = [(g.task_run.id, g.attempt) for g in held[wid]] if reattach else []
                core.register_worker(wid, {"cpu": cpu}, frozenset(TASKS), now, running=running)
            held = {
                wid: [
                    type(g)(core.task_runs[g.task_run.id], g.attempt, g.args)
                    for g in gs
                    if reattach and g.task_run.id in core.task_runs
                ]
                for wid, gs in held.items()
            }
    for wid, gs in held.items():
        core.report(wid, [_outcome(g, "ok", n) for g in gs], now)
    core.register_worker("final", {"cpu": 64.0}, frozenset(TASKS), now)
    for _ in range(100):
        if flow.terminal:
            break
        now += 10
        for wid in list(core.workers):
            core.heartbeat(wid, [], now)
        core.tick(now)
        grants = core.lease("final", 100, now, max_batch=4) or []
        core.report("final", [_outcome(g, "ok", n) for g in grants], now)
    assert flow.terminal
    assert all(tr.state in TERMINAL_TASK_STATES for tr in core.task_runs.values())
    assert not any(core.slots_held.values()), core.slots_held
    for worker in core.workers.values():
        assert not worker.running and all(a < 1e-9 for a in worker.allocated.values())
    events = list(flow.events)
    core = restart(core, store, now, **kw)
    assert list(core.flows["f"].events) == events


def test_probe_unschedulable_expansion_then_progress_restores_the_same():
    """A node expanded while nothing can run it (one-row expansion + UNSCHEDULABLE event),
    then a worker joins and leases part of it: a restart reads back the same log."""
    now = 1000.0
    store = MemoryStore()
    core = Scheduler(lease_ttl_s=5.0)
    flow = submit(core, spec_of(mapnode("lit", x=("items", list(range(10))))), "f", now)
    core.register_worker("w", {"cpu": 1.0}, frozenset({"lit"}), now)
    (g,) = core.lease("w", 1, now, max_batch=8)
    core.report("w", [Outcome(g.task_run.id, g.attempt, value=b"x", duration_s=0.001)], now)
    grants = core.lease("w", 1, now, max_batch=8)
    assert len(grants) > 1
    events = list(flow.events)
    assert EventKind.TASK_RUN_UNSCHEDULABLE in [e.kind for e in events]
    core = restart(core, store, now, lease_ttl_s=5.0)
    assert list(core.flows["f"].events) == events
    assert sorted(tr.state for tr in core.task_runs.values()) == sorted(
        tr.state for tr in flow.nodes[0].children
    )
    assert core.flows["f"].nodes[0].counts[TaskRunState.RUNNING] == len(grants)


# --------------------------------------------------------------------------------- serde


plain_values = st.recursive(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.binary(max_size=5),
        st.booleans(),
        st.none(),
        st.complex_numbers(allow_nan=False),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_probe_fast_serde_writes_what_cloudpickle_writes(value):
    assert dumps(value) == cloudpickle.dumps(value, protocol=5)
