from __future__ import annotations

import random

import pytest
from fleetflow_worker.backoff import Backoff, backoff_delay
from fleetflow_worker.state import AttemptKey, AttemptTable, CancelAction

A = AttemptKey(1, 1)
B = AttemptKey(2, 1)


@pytest.fixture
def table():
    t = AttemptTable(max_concurrency=2)
    yield t
    t.validate()


def test_slots_follow_running_attempts(table):
    assert table.free_slots == 2
    assert table.start(A, is_async=True)
    assert table.start(B, is_async=False)
    assert (table.running, table.free_slots) == (2, 0)
    assert table.finish(A) is True
    assert (table.running, table.free_slots) == (1, 1)


def test_reporting_attempts_stay_held_until_acknowledged(table):
    table.start(A, is_async=True)
    table.finish(A)
    assert table.held() == [A] and table.running == 0
    table.acknowledged(A)
    assert table.held() == [] and len(table) == 0


def test_duplicate_lease_is_refused(table):
    assert table.start(A, is_async=True)
    assert not table.start(A, is_async=True)
    table.finish(A)
    assert not table.start(A, is_async=True), "still held while its outcome is queued"


def test_a_new_attempt_of_the_same_task_run_is_separate(table):
    table.start(A, is_async=True)
    assert table.start(AttemptKey(1, 2), is_async=True)


def test_cancel_async_cancels_and_drops_the_outcome(table):
    table.start(A, is_async=True)
    assert table.cancel(A) is CancelAction.CANCEL_TASK
    assert table.is_cancelled(A)
    assert table.cancel(A) is CancelAction.NONE, "only once"
    assert table.finish(A) is False
    assert A not in table


def test_cancel_sync_keeps_the_slot_until_the_process_is_done(table):
    table.start(B, is_async=False)
    assert table.cancel(B) is CancelAction.KILL_PROCESS
    assert table.running == 1
    assert table.finish(B) is False
    assert table.running == 0 and B not in table


def test_cancel_after_finish_keeps_the_queued_outcome(table):
    table.start(A, is_async=True)
    table.finish(A)
    assert table.cancel(A) is CancelAction.NONE
    assert table.held() == [A]


def test_cancel_of_an_unknown_attempt(table):
    assert table.cancel(A) is CancelAction.NONE


def test_finish_without_outcome_forgets(table):
    table.start(A, is_async=True)
    assert table.finish(A, has_outcome=False) is False
    assert A not in table


def test_finish_twice_is_a_bug(table):
    table.start(A, is_async=True)
    table.finish(A)
    with pytest.raises(KeyError):
        table.finish(A)


def test_max_concurrency_must_be_positive():
    with pytest.raises(ValueError):
        AttemptTable(0)


def test_backoff_grows_caps_and_jitters():
    rng = random.Random(1)
    delays = [backoff_delay(n, base_s=0.1, cap_s=2.0, rng=rng) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(2.0, 0.1 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 2.0
    assert backoff_delay(0) == 0.0
    assert backoff_delay(10_000, cap_s=1.5) <= 1.5


def test_backoff_counts_a_streak():
    backoff = Backoff(cap_s=1.0, rng=random.Random(0))
    backoff.failed()
    backoff.failed()
    assert backoff.failures == 2
    assert backoff.succeeded() == 2
    assert backoff.failures == 0


def test_a_batch_takes_one_slot_until_its_last_member_ends():
    table = AttemptTable(2)
    keys = [AttemptKey(i, 1) for i in range(1, 5)]
    assert table.start_batch([*keys, keys[0]], is_async=False) == keys  # a duplicate is dropped
    assert table.running == 1 and table.free_slots == 1 and len(table) == 4
    assert table.start_batch(keys, is_async=False) == []  # all held already
    table.cancel(keys[1])
    assert table.finish(keys[1]) is False  # cancelled: nothing to report
    for key in keys[2:]:
        assert table.finish(key) is True
        table.validate()
    assert table.running == 1  # keys[0] still runs: the slot stays taken
    assert table.finish(keys[0]) is True
    assert table.running == 0 and table.free_slots == 2
    table.validate()


def test_two_asks_in_flight_never_ask_for_the_same_slot():
    table = AttemptTable(3)
    poll = table.reserve()  # the long poll takes every free slot
    assert poll.remaining == 3 and table.free_slots == 0
    piggyback = table.reserve()  # ReportOutcomes asks at the same moment: nothing left
    assert piggyback.remaining == 0
    assert table.release(piggyback) == 0
    keys = [AttemptKey(i, 1) for i in range(1, 4)]
    assert table.start(keys[0], is_async=True, reservation=poll)
    assert table.start_batch(keys[1:], is_async=False, reservation=poll) == keys[1:]
    assert table.running == 2 and table.reserved == 1 and table.free_slots == 0
    table.validate()
    assert table.release(poll) == 1  # the answer used two of three
    assert table.free_slots == 1 and table.reserved == 0
    assert table.release(poll) == 0  # releasing twice gives nothing back
    table.validate()


def test_a_reservation_is_bounded_by_what_is_free_and_by_most():
    table = AttemptTable(4)
    table.start(A, is_async=True)
    assert table.reserve(2).remaining == 2
    assert table.reserve(5).remaining == 1  # only one left
    assert table.reserve(0).remaining == 0  # a draining worker asks for none
    assert table.free_slots == 0
    table.validate()


def test_a_duplicate_lease_leaves_its_reserved_slot_to_be_released():
    table = AttemptTable(2)
    table.start(A, is_async=True)
    ask = table.reserve()
    assert not table.start(A, is_async=True, reservation=ask)  # already held
    assert ask.remaining == 1 and table.release(ask) == 1
    assert table.free_slots == 1
    table.validate()
