"""The coordinator's clock does not follow a step of the system clock.

Liveness (lease TTLs) and every deadline the core keeps are measured on it; a
wall-clock step (NTP correcting a wrong clock, ``date -s``, a resumed VM) must
neither expire every live worker at once nor keep a dead one's leases alive
(the class of nats-server#6999 and xen-api#5700).
"""

from __future__ import annotations

import pytest
from fleetflow_coordinator.clock import SteadyClock
from fleetflow_coordinator.core import Scheduler
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.settings import Settings


class FakeTime:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _clock(t: FakeTime) -> SteadyClock:
    return SteadyClock(lambda: t.wall, lambda: t.mono)


def test_it_follows_the_wall_clock_and_its_small_corrections():
    t = FakeTime()
    clock = _clock(t)
    assert clock() == t.wall
    for _ in range(100):
        t.advance(0.05)
        t.wall += 0.0005  # NTP slewing: followed
        assert clock() == pytest.approx(t.wall)
    assert clock.steps == 0


@pytest.mark.parametrize("step_s", [3600.0, -3600.0, 5.0, -5.0])
def test_a_step_is_not_followed_but_bled_away(step_s):
    t = FakeTime()
    clock = _clock(t)
    before = clock()
    t.wall += step_s
    t.advance(1.0)
    assert clock() == pytest.approx(before + 1.0)  # one real second passed
    assert clock.steps == 1 and clock.offset_s == pytest.approx(-step_s)
    # Every interval stays within 10 % of real time while the offset is bled away.
    last = clock()
    for _ in range(20_000):
        t.advance(5.0)
        now = clock()
        assert 4.5 - 1e-9 <= now - last <= 5.5 + 1e-9
        last = now
        if clock.offset_s == 0:
            break
    assert clock.offset_s == 0 and clock() == t.wall


def test_a_forward_step_expires_no_live_worker_and_a_backward_one_keeps_no_dead_one():
    t = FakeTime()
    clock = _clock(t)
    core = Scheduler(lease_ttl_s=10.0)
    core.register_worker("alive", {"cpu": 1.0}, frozenset({"t"}), clock())
    core.register_worker("dead", {"cpu": 1.0}, frozenset({"t"}), clock())
    t.advance(2.0)
    core.heartbeat("alive", [], clock())
    t.wall += 3600.0  # forward step, then a tick
    t.advance(0.05)
    core.tick(clock())
    assert set(core.workers) == {"alive", "dead"}
    t.wall -= 7200.0  # backward step; "dead" stays silent for 11 real seconds
    for _ in range(220):
        t.advance(0.05)
        core.heartbeat("alive", [], clock())
        core.tick(clock())
    assert set(core.workers) == {"alive"}


def test_the_coordinator_runs_on_it_by_default():
    assert isinstance(Runtime(Settings()).clock, SteadyClock)


def test_a_restart_behind_the_stored_times_starts_no_earlier_and_bleeds_the_gap():
    """A clock stepped back across a restart: new events never stamp before stored ones."""
    t = FakeTime()
    clock = _clock(t)
    stored = t.wall + 600.0  # the last event stored before the step back
    clock.not_before(stored)
    assert clock() >= stored
    t.advance(100.0)
    now = clock()
    assert stored < now < stored + 100.0  # intervals run at most 10 % slow while bleeding
    assert now == pytest.approx(stored + 90.0)
    clock.not_before(float("nan"))  # ignored
    clock.not_before(t.wall - 1e6)  # behind: nothing to do
    assert clock() >= now


async def test_the_runtime_seeds_its_clock_from_the_latest_stored_event():
    from fleetflow_coordinator.store import MemoryStore

    from tests.review.helpers import persist, plain, spec_of, submit

    t = FakeTime()
    later = t.wall + 3600.0  # stored by a coordinator whose clock was an hour ahead
    core = Scheduler()
    submit(core, spec_of(plain("t", x=1)), "f" * 32, later)
    store = MemoryStore()
    persist(core, store)
    rt = Runtime(Settings(), store=store, clock=_clock(t))
    try:
        assert await rt.open() == 1
        assert rt.clock() >= later  # not an hour before the stored submission
    finally:
        await rt.stop()
