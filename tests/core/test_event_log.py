"""EventLog: list-like, with expansion ranges rebuilt on read; slim and full EventRecords."""

from __future__ import annotations

import pytest
from fleetflow_coordinator.core.model import EventKind, EventLog, EventRecord
from hypothesis import given, settings
from hypothesis import strategies as st


def _plain(seq: int, kind: EventKind = EventKind.TASK_RUN_STARTED) -> EventRecord:
    return EventRecord(seq, kind, 10.0 + seq, 0, "t", 100 + seq, seq, 1, "w")


def test_a_log_reads_like_the_list_it_stands_for():
    log = EventLog()
    log.append(EventRecord(1, EventKind.NODE_EXPANDED, 5.0, 2, "inc", count=3))
    assert log.extend_scheduled(3, 40, 6.0, 2, "inc") == 2
    log.append(_plain(5))
    expected = [
        EventRecord(1, EventKind.NODE_EXPANDED, 5.0, 2, "inc", count=3),
        *(
            EventRecord(2 + i, EventKind.TASK_RUN_SCHEDULED, 6.0, 2, "inc", 40 + i, i, 1)
            for i in range(3)
        ),
        _plain(5),
    ]
    assert len(log) == 5
    assert list(log) == expected
    assert [log[i] for i in range(5)] == expected
    assert log[-2] == expected[-2] and log[-1] == expected[-1]
    for start in range(6):
        for stop in range(start, 6):
            assert log[start:stop] == expected[start:stop], (start, stop)
    assert log[::2] == expected[::2]
    with pytest.raises(IndexError):
        log[5]
    assert EventLog(expected)[2:4] == expected[2:4]


def test_records_default_the_rare_fields():
    slim = _plain(1)
    full = EventRecord(2, EventKind.TASK_RUN_RETRYING, 1.0, message="boom", retry_at=3.0)
    assert (slim.count, slim.message, slim.error, slim.retry_at) == (0, "", None, 0.0)
    assert (full.message, full.retry_at, full.count) == ("boom", 3.0, 0)
    assert slim != full and slim == _plain(1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([EventKind.TASK_RUN_STARTED, EventKind.TASK_RUN_COMPLETED]),
            st.integers(0, 1),  # time step
            st.integers(0, 2),  # task run id step (1: continues a run)
            st.sampled_from(["w1", "w2"]),
            st.integers(1, 2),  # attempt
            st.booleans(),  # carries a message (a full record)
            st.integers(0, 3),  # an expansion of this many first
        ),
        max_size=60,
    )
)
def test_runs_are_kept_compactly_and_read_back_exactly(steps):
    log, expected = EventLog(), []
    time, task_run = 1.0, 100
    for kind, dt, step, worker, attempt, full, expansion in steps:
        if expansion:
            first_seq = log.extend_scheduled(expansion, 5000 + len(expected), time, 1, "t")
            expected += [
                EventRecord(
                    first_seq + i,
                    EventKind.TASK_RUN_SCHEDULED,
                    time,
                    1,
                    "t",
                    5000 + first_seq - 1 + i,
                    i,
                    1,
                )
                for i in range(expansion)
            ]
        time += dt
        task_run += step
        event = EventRecord(
            len(expected) + 1,
            kind,
            time,
            1,
            "t",
            task_run,
            task_run - 100,
            attempt,
            worker,
            message="m" if full else "",
        )
        log.append(event)
        expected.append(event)
        assert len(log) == len(expected)
    assert list(log) == expected
    assert log[:] == expected
    assert [log[i] for i in range(len(expected))] == expected
    assert list(EventLog(expected)) == expected
    for start in range(0, len(expected) + 1, 7):
        for stop in (start, start + 5, len(expected) + 3):
            assert _expand(log.spans(start, stop)) == expected[start:stop], (start, stop)


def _expand(spans) -> list[EventRecord]:
    """Rebuild every event of ``EventLog.spans`` (a record, or a stretch of a run)."""
    out: list[EventRecord] = []
    for item in spans:
        if isinstance(item, EventRecord):
            out.append(item)
            continue
        seq, count, kind, time, node, task_name, first, index, attempt, worker = item
        assert count >= 1
        out += [
            EventRecord(seq + i, kind, time, node, task_name, first + i, index + i, attempt, worker)
            for i in range(count)
        ]
    return out


def test_spans_hand_out_a_run_whole_and_cut_it_at_the_ends():
    log = EventLog()
    log.append(EventRecord(1, EventKind.NODE_EXPANDED, 5.0, 2, "inc", count=4))
    log.extend_scheduled(4, 40, 6.0, 2, "inc")
    items = list(log.spans(0, 5))
    assert items[0] == log[0] and len(items) == 2
    assert items[1] == (2, 4, EventKind.TASK_RUN_SCHEDULED, 6.0, 2, "inc", 40, 0, 1, "")
    assert list(log.spans(2, 4)) == [
        (3, 2, EventKind.TASK_RUN_SCHEDULED, 6.0, 2, "inc", 41, 1, 1, "")
    ]
    assert list(log.spans(5, 9)) == []
