"""One contract suite over every store (memory, SQLite, PostgreSQL), plus restore."""

from __future__ import annotations

import os
import pickle
import sqlite3

import psycopg
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow_coordinator.core import Outcome, Scheduler, TaskRunState
from fleetflow_coordinator.core.model import EventKind, FlowRunState
from fleetflow_coordinator.store import MemoryStore, RowBatch, SqliteStore, StoreError, open_store
from fleetflow_coordinator.store.base import SCHEMA_VERSION, NotLeader, expand_event_runs
from fleetflow_coordinator.store.postgres import PostgresStore
from fleetflow_coordinator.store.rows import changes_to_batch, snapshot_to_flows

from .. import pg
from ..core.harness import Fleet, items, lit, node, ref


@pytest.fixture(scope="module")
def pg_database():
    with pg.database("store") as dsn:
        yield dsn


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "db" / "ff.db")
    else:
        dsn = request.getfixturevalue("pg_database")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS fleetflow CASCADE")
        s = PostgresStore(dsn, lease_s=30)
        assert s.campaign("127.0.0.1:1").acquired
    yield s
    s.close()


def _flow_row(flow_id="f1", created=1.0):
    return (flow_id, "flow", b"spec", 1, created, 0.0, "key", None, None, None)


def test_rows_round_trip_and_updates(store):
    store.write(
        RowBatch(
            flows=[_flow_row()],
            nodes=[("f1", 0, 1, 0)],
            task_runs=[(7, "f1", 0, 0, 3, 1, "w", 5.0, None, None, None, 0, 0, 0.0)],
            events=[("f1", 1, 1, 1.0, 0, "", 0, 0, 0, "", 1, "", None, 0.0)],
        )
    )
    store.write(
        RowBatch(
            flow_updates=[(2, 9.0, None, None, None, "f1")],
            task_runs=[(7, "f1", 0, 0, 5, 1, "", 5.0, b"r", None, None, 0, 0, 0.0)],
            events=[("f1", 2, 8, 2.0, 0, "t", 7, 0, 1, "w", 0, "", b"e", 0.0)],
        )
    )
    snap = store.load()
    assert snap.flows == [("f1", "flow", b"spec", 2, 1.0, 9.0, "key", None, None, None)]
    assert snap.task_runs["f1"] == [(7, "f1", 0, 0, 5, 1, "", 5.0, b"r", None, None, 0, 0, 0.0)]
    assert [e[1] for e in snap.events["f1"]] == [1, 2]
    assert snap.nodes["f1"] == [("f1", 0, 1, 0)]


def test_settings_kept_in_meta_round_trip_and_delete(store):
    # Issue 17 item 4: limits set over the API and measured usage outlive a restart.
    store.write(RowBatch(meta={"limit:warehouse": "2", "usage:task:t": "{}"}, next_task_run_id=5))
    store.write(RowBatch(meta={"limit:warehouse": "3", "limit:gone": "1"}))
    store.write(RowBatch(meta={"limit:gone": None, "limit:never": None}))
    snap = store.load()
    assert snap.meta == {"limit:warehouse": "3", "usage:task:t": "{}"}
    assert snap.next_task_run_id == 5  # the store's own keys stay out of meta


def test_pruning_deletes_a_flow_run_with_everything_it_owns(store):
    store.write(
        RowBatch(
            flows=[_flow_row("a"), _flow_row("b", 2.0)],
            nodes=[("a", 0, 1, 0), ("b", 0, 1, 0)],
            task_runs=[
                (1, "a", 0, 0, 5, 1, "", 0.0, b"", None, None, 0, 0, 0.0),
                (2, "b", 0, 0, 5, 1, "", 0.0, b"", None, None, 0, 0, 0.0),
            ],
            events=[
                ("a", 1, 1, 1.0, 0, "", 0, 0, 0, "", 0, "", None, 0.0),
                ("b", 1, 1, 1.0, 0, "", 0, 0, 0, "", 0, "", None, 0.0),
            ],
        )
    )
    store.write(RowBatch(pruned=["a"]))
    snap = store.load()
    assert [f[0] for f in snap.flows] == ["b"]
    assert set(snap.task_runs) == {"b"} and set(snap.events) == {"b"} and set(snap.nodes) == {"b"}


def _drive(fleet: Fleet, store) -> None:
    store.write(changes_to_batch(fleet.core.drain_changes()))


def test_restore_rebuilds_state_and_the_flow_finishes(store):
    fleet = Fleet(lease_ttl_s=3.0)
    fleet.add_worker("w", ["inc", "collect", "listing"])
    # A real spec blob is needed for restore: build one that matches the nodes.
    spec = common_pb2.FlowSpec(name="flow", output_node=2)
    n0 = spec.nodes.add(task_name="listing", resources=common_pb2.Resources(amounts={"cpu": 1}))
    n0.args.add(name="n", literal=pickle.dumps(6))
    n1 = spec.nodes.add(
        task_name="inc", map=True, resources=common_pb2.Resources(amounts={"cpu": 1})
    )
    n1.args.add(name="x", node=0, mapped=True)
    n2 = spec.nodes.add(task_name="collect", resources=common_pb2.Resources(amounts={"cpu": 1}))
    n2.args.add(name="xs", node=1)
    nodes = [
        node("listing", lit("n", 6)),
        node("inc", ref("x", 0, mapped=True), map_=True),
        node("collect", ref("xs", 1)),
    ]
    flow, _ = fleet.core.submit(
        "f1",
        "flow",
        nodes,
        fleet.now,
        output_node=2,
        spec_blob=spec.SerializeToString(),
        idempotency_key="k",
    )
    fns = {
        "listing": lambda n: list(range(n)),
        "inc": lambda x: x + 1,
        "collect": lambda xs: list(xs),
    }
    # Run the listing, then lease part of the map and leave it in flight.
    g = fleet.core.lease("w", 1, fleet.now)[0]
    fleet.core.report(
        "w", [Outcome(g.task_run.id, 1, items=[pickle.dumps(i) for i in range(6)])], fleet.now
    )
    inflight = fleet.core.lease("w", 2, fleet.now)
    done = fleet.core.lease("w", 1, fleet.now)[0]
    fleet.core.report("w", [Outcome(done.task_run.id, 1, value=pickle.dumps(99))], fleet.now)
    _drive(fleet, store)
    events_before = [(e.seq, e.kind) for e in flow.events]

    # "Restart": a new scheduler from the stored rows only.
    restored = Scheduler(lease_ttl_s=3.0)
    restored.restore(snapshot_to_flows(store.load()), fleet.now)
    again = restored.flows["f1"]
    assert [(e.seq, e.kind) for e in again.events] == events_before
    assert again.durable_seq == len(events_before)
    assert [c.state for c in again.nodes[1].children].count(TaskRunState.RUNNING) == 2
    assert restored.idempotency == {"k": "f1"}
    assert restored.submit("x", "flow", nodes, fleet.now, idempotency_key="k")[0] is again

    fleet.core = restored
    fleet.add_worker("w2", ["inc", "collect", "listing"])
    # The old worker re-attaches one of its two in-flight attempts.
    kept, lost = inflight
    restored.register_worker(
        "w", {"cpu": 4.0}, frozenset(["inc"]), fleet.now, running=[(kept.task_run.id, kept.attempt)]
    )
    restored.report(
        "w", [Outcome(kept.task_run.id, kept.attempt, value=pickle.dumps(1))], fleet.now
    )
    fleet.run("w2", fns)
    assert again.state == FlowRunState.RUNNING  # the un-attached one waits out the TTL
    fleet.core.heartbeat("w2", [], fleet.now)
    fleet.now += 3.5
    fleet.core.heartbeat("w2", [], fleet.now)
    fleet.core.tick(fleet.now)
    assert restored.task_runs[lost.task_run.id].attempt == 2
    fleet.run("w2", fns)
    assert again.state == FlowRunState.COMPLETED
    result = pickle.loads(fleet.core.flow_result(again))
    assert result[done.task_run.index] == 99 and result[kept.task_run.index] == 1
    assert EventKind.TASK_RUN_LEASE_EXPIRED in [e.kind for e in again.events]


def test_restore_keeps_a_retry_delay_in_progress(store):
    fleet = Fleet()
    fleet.add_worker("w", ["bad"])
    spec = common_pb2.FlowSpec(name="flow")
    spec.nodes.add(
        task_name="bad",
        resources=common_pb2.Resources(amounts={"cpu": 1}),
        retry=common_pb2.RetryPolicy(retries=1, retry_delay_seconds=30),
    )
    flow, _ = fleet.core.submit(
        "f1",
        "flow",
        [node("bad", retries=1, delay=30.0)],
        fleet.now,
        spec_blob=spec.SerializeToString(),
    )
    g = fleet.core.lease("w", 1, fleet.now)[0]
    err = common_pb2.TaskError(type="builtins.ValueError", message="x")
    fleet.core.report("w", [Outcome(g.task_run.id, 1, error=err)], fleet.now)
    _drive(fleet, store)
    restored = Scheduler()
    restored.restore(snapshot_to_flows(store.load()), fleet.now + 10)
    restored.register_worker("w", {"cpu": 1.0}, frozenset(["bad"]), fleet.now + 10)
    tr = restored.flows["f1"].nodes[0].children[0]
    assert tr.state == TaskRunState.AWAITING_RETRY and tr.error.message == "x"
    restored.tick(fleet.now + 29.9)
    assert tr.state == TaskRunState.AWAITING_RETRY
    restored.tick(fleet.now + 30.0)
    assert tr.state == TaskRunState.SCHEDULED and tr.attempt == 2


def test_prune_is_stored(store):
    fleet = Fleet()
    fleet.add_worker("w", ["inc"])
    spec = common_pb2.FlowSpec(name="flow").SerializeToString()
    fleet.core.submit("old", "flow", [node("inc", lit("x", 1))], fleet.now, spec_blob=spec)
    fleet.run("w", {"inc": lambda x: x + 1})
    fleet.now += 100
    fleet.core.submit("new", "flow", [node("inc", lit("x", 1))], fleet.now, spec_blob=spec)
    _drive(fleet, store)
    assert fleet.core.prune(fleet.now - 50) == ["old"]
    _drive(fleet, store)
    assert [f[0] for f in store.load().flows] == ["new"]


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "ff.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this fleetflow"):
        SqliteStore(path)


def test_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a fleetflow database"):
        SqliteStore(path)


def test_corrupt_database_fails_clearly(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="corrupt"):
        SqliteStore(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_path_fails_clearly(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(StoreError):
        SqliteStore(folder / "sub" / "ff.db")


def test_path_under_a_file_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot be created"):
        SqliteStore(blocker / "ff.db")


def test_memory_is_only_used_when_asked_for(tmp_path):
    assert isinstance(open_store(":memory:"), MemoryStore)
    assert isinstance(open_store(str(tmp_path / "x.db")), SqliteStore)


def test_changes_cover_every_row_a_restore_needs():
    fleet = Fleet()
    fleet.add_worker("w", ["inc"])
    fleet.core.submit(
        "f", "flow", [node("inc", items("x", [1, 2, 3]), map_=True)], fleet.now, spec_blob=b""
    )
    changes = fleet.core.drain_changes()
    assert len(changes.new_flows) == 1 and len(changes.nodes) == 1
    assert [e.kind for _, e in changes.events] == [
        EventKind.FLOW_RUN_SUBMITTED,
        EventKind.NODE_EXPANDED,
    ]
    # The three children, SCHEDULED at once, travel as one expansion, not 3 rows + 3 events.
    assert not changes.task_runs
    ((flow, expanded, first_id, count, first_seq, _),) = changes.expansions
    assert (expanded.index, count, first_seq) == (0, 3, 3)
    assert [tr.id for tr in expanded.children] == [first_id, first_id + 1, first_id + 2]
    assert fleet.core.drain_changes().events == []


def test_an_expansion_row_stands_for_its_children_until_they_change(store):
    """A map's children are stored as one expansion row; later rows of their own win."""
    fleet = Fleet()
    fleet.add_worker("w", ["inc"], cpu=2.0)
    spec = common_pb2.FlowSpec(name="flow", output_node=0)
    n0 = spec.nodes.add(
        task_name="inc", map=True, resources=common_pb2.Resources(amounts={"cpu": 1})
    )
    n0.args.add(
        name="x",
        literal_items=common_pb2.ValueList(items=[pickle.dumps(i) for i in range(50)]),
        mapped=True,
    )
    flow, _ = fleet.core.submit(
        "f1",
        "flow",
        [node("inc", items("x", list(range(50))), map_=True)],
        fleet.now,
        output_node=0,
        spec_blob=spec.SerializeToString(),
    )
    first = fleet.core.lease("w", 1, fleet.now)  # leased before the first commit
    batch = changes_to_batch(fleet.core.drain_changes())
    # No task run row at all: the lease's TASK_RUN_STARTED event stands for it.
    assert len(batch.expansions) == 1 and len(batch.task_runs) == 0
    # submitted, expanded, the lease (a run of one); not 50 SCHEDULED
    assert len(batch.events) == 2 and [run[2] for run in batch.event_runs] == [1]
    store.write(batch)
    fleet.core.report("w", [Outcome(first[0].task_run.id, 1, value=pickle.dumps(1))], fleet.now)
    second = fleet.core.lease("w", 1, fleet.now)
    _drive(fleet, store)

    restored = Scheduler()
    restored.restore(snapshot_to_flows(store.load()), fleet.now)
    again = restored.flows["f1"]
    fields = (
        "seq",
        "kind",
        "time",
        "node",
        "task_name",
        "task_run_id",
        "index",
        "attempt",
        "worker_id",
        "count",
        "message",
        "retry_at",
    )
    assert [tuple(getattr(e, f) for f in fields) for e in again.events] == [
        tuple(getattr(e, f) for f in fields) for e in flow.events
    ]
    states = [(tr.id, tr.index, tr.state, tr.attempt) for tr in flow.nodes[0].children]
    assert [(tr.id, tr.index, tr.state, tr.attempt) for tr in again.nodes[0].children] == states
    assert again.nodes[0].children[0].result == pickle.dumps(1)
    running = again.nodes[0].children[1]
    assert running.state == TaskRunState.RUNNING  # waits for its worker, read from its event
    assert (running.worker_id, running.leased_at) == ("w", second[0].task_run.leased_at)
    assert sum(1 for tr in again.nodes[0].children if tr.state == TaskRunState.SCHEDULED) == 48
    assert second[0].task_run.index == 1


def test_a_restore_reads_leased_task_runs_from_their_started_events(store):
    """Leases store no task run row; after every commit a restore gives each task run's
    state, attempt, worker and lease time, through retries, hand-backs and lost workers."""
    fleet = Fleet()
    fleet.add_worker("a", ["inc"], cpu=2.0)
    fleet.add_worker("b", ["inc"], cpu=2.0)
    spec = common_pb2.FlowSpec(name="flow", output_node=0)
    n0 = spec.nodes.add(
        task_name="inc", map=True, resources=common_pb2.Resources(amounts={"cpu": 1})
    )
    n0.retry.retries = 1
    n0.args.add(
        name="x",
        literal_items=common_pb2.ValueList(items=[pickle.dumps(i) for i in range(12)]),
        mapped=True,
    )
    flow, _ = fleet.core.submit(
        "f1",
        "flow",
        [node("inc", items("x", list(range(12))), map_=True, retries=1)],
        fleet.now,
        output_node=0,
        spec_blob=spec.SerializeToString(),
    )
    error = common_pb2.TaskError(type="E", message="boom")

    def check() -> None:
        _drive(fleet, store)
        restored = Scheduler()
        restored.restore(snapshot_to_flows(store.load()), fleet.now)

        def view(f):
            return [
                (tr.id, tr.state, tr.attempt)
                + ((tr.worker_id, tr.leased_at) if tr.state == TaskRunState.RUNNING else ())
                for tr in f.nodes[0].children
            ]

        assert view(restored.flows["f1"]) == view(flow)

    a1 = fleet.core.lease("a", 2, fleet.now)
    check()
    fleet.advance(1.0)
    b1 = fleet.core.lease("b", 2, fleet.now)
    check()
    fleet.advance(1.0)
    ok = Outcome(a1[0].task_run.id, 1, value=pickle.dumps(1))
    fleet.core.report("a", [ok, Outcome(a1[1].task_run.id, 1, error=error)], fleet.now)
    check()  # one completed, one awaiting its retry at attempt 2
    assert fleet.core.release_leases("b", [(b1[0].task_run.id, 1)], fleet.now) == 1
    check()  # handed back: SCHEDULED at attempt 2
    fleet.advance(1.0)  # the retry is due
    assert len(fleet.core.lease("a", 2, fleet.now)) == 2
    check()
    assert len(fleet.core.lease("b", 1, fleet.now)) == 1
    check()
    fleet.core.lose_worker("b", fleet.now, "gone")
    check()  # b's attempts re-queued at higher attempts
    for _ in range(12):  # run a's attempts until the re-queued ones (attempt 2+) run
        running = [tr for tr in flow.nodes[0].children if tr.state == TaskRunState.RUNNING]
        if any(tr.attempt >= 2 for tr in running):
            break
        done = [Outcome(tr.id, tr.attempt, value=pickle.dumps(1)) for tr in running]
        fleet.core.report("a", done, fleet.now)
        fleet.advance(0.5)
        fleet.core.lease("a", 2, fleet.now)
        check()
    else:
        raise AssertionError("no re-queued attempt was leased")


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE expansions")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    store = SqliteStore(path)
    store.write(RowBatch(expansions=[("f", 0, "t", 1, 2, 3, 1.0)]))
    assert len(store.load().task_runs["f"]) == 2
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    db.close()


def test_a_version_2_database_is_upgraded_so_older_fleetflow_refuses_it(tmp_path):
    """Version 3 changed what a lease stores, not a table: the number alone moves."""
    path = tmp_path / "v2.db"
    store = SqliteStore(path)
    store.write(RowBatch(flows=[_flow_row()]))
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert [row[0] for row in store.load().flows] == ["f1"]
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    db.close()


# --------------------------------------------------- database file checks (issue 11)


def _stored_database(path) -> None:
    store = SqliteStore(path)
    store.write(
        RowBatch(
            flows=[_flow_row()],
            task_runs=[
                (i, "f1", 0, i, 2, 1, "", 0.0, b"x" * 200, None, None, 0, 0, 0.0)
                for i in range(2000)
            ],
        )
    )
    store.close()


def test_an_empty_file_is_refused_naming_it_and_left_alone(tmp_path):
    path = tmp_path / "ff.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match=r"ff\.db is empty \(0 bytes\)"):
        SqliteStore(path)
    assert path.read_bytes() == b""


def test_a_truncated_database_is_refused(tmp_path):
    path = tmp_path / "ff.db"
    _stored_database(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"ff\.db is truncated"):
        SqliteStore(path)
    path.write_bytes(data[:60])
    with pytest.raises(StoreError, match=r"ff\.db is truncated"):
        SqliteStore(path)


def test_a_foreign_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("shopping list\n" * 20)
    with pytest.raises(StoreError, match=r"notes\.txt is not an SQLite file"):
        SqliteStore(path)
    empty = tmp_path / "empty.db"
    db = sqlite3.connect(empty)
    db.execute("CREATE TABLE t (x)")
    db.execute("DROP TABLE t")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"empty\.db is an SQLite file without fleetflow"):
        SqliteStore(empty)


def test_a_new_database_appears_whole_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "ff.db"
    SqliteStore(path).close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["ff.db"]
    store = SqliteStore(path)  # opened again: a whole fleetflow database
    assert store.load().flows == []
    store.close()


def test_a_large_batch_is_stored_whole_and_the_last_row_of_a_task_run_wins(store):
    """Large batches take the bulk path (COPY on PostgreSQL); a later row in one batch wins."""
    runs = [(i, "f1", 0, i, 2, 1, "", 0.0, None, None, None, 0, 0, 0.0) for i in range(5000)]
    runs += [(7, "f1", 0, 7, 5, 1, "w", 1.5, b"\x00r", None, b"e", 1, 2, 3.5)]
    events = [
        ("f1", seq, 7, 1.0, 0, "inc", seq, seq, 1, "w", 0, "m\u00e9", None, 0.0)
        for seq in range(1, 5001)
    ]
    store.write(RowBatch(flows=[_flow_row()], task_runs=runs, events=events))
    snap = store.load()
    stored = {r[0]: r for r in snap.task_runs["f1"]}
    assert len(stored) == 5000
    assert stored[7] == (7, "f1", 0, 7, 5, 1, "w", 1.5, b"\x00r", None, b"e", 1, 2, 3.5)
    assert [e[1] for e in snap.events["f1"]] == list(range(1, 5001))
    assert snap.events["f1"][0] == events[0]


def test_event_runs_are_stored_as_the_rows_they_stand_for(store):
    """A run of plain events (one SQL statement on SQLite, rows elsewhere) is its rows."""
    runs = [
        ("f1", 1, 1, 4, 1.5, 0, "inc", 10, 0, 1, "w"),
        ("f1", 2, 7, 5, 2.5, 0, "inc", 11, 1, 2, ""),
        ("f1", 9, 8, 4, 3.5, 1, "m:t", 100, 0, 1, "w\u00e9"),
        ("f1", 17, 600, 5, 4.5, 1, "m:t", 108, 8, 3, "w2"),
    ]
    plain = ("f1", 617, 7, 5.5, 0, "inc", 5, 5, 1, "w", 0, "m", None, 0.0)
    store.write(RowBatch(flows=[_flow_row()], events=[plain], event_runs=list(runs)))
    events = store.load().events["f1"]
    assert events == expand_event_runs(runs) + [plain]
    assert [e[1] for e in events] == list(range(1, 618))
    assert events[16] == ("f1", 17, 5, 4.5, 1, "m:t", 108, 8, 3, "w2", 0, "", None, 0.0)
    assert events[615] == ("f1", 616, 5, 4.5, 1, "m:t", 707, 607, 3, "w2", 0, "", None, 0.0)


@pytest.mark.parametrize("max_variables", [None, 999])
@pytest.mark.parametrize("n", [1, 3, 1023, 1029, 2345])
def test_sqlite_multi_row_inserts_store_every_row_in_order(tmp_path, n, max_variables):
    """Rows go in several per statement: every size and SQLite's old 999-variable limit."""
    store = SqliteStore(tmp_path / "ff.db")
    if max_variables is not None:
        store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, max_variables)
        store._max_variables = max_variables
    runs = [(i, "f1", 0, i, 2, 1, "", 0.0, None, None, None, 0, 0, 0.0) for i in range(n)]
    # A second row of one task run in the same chunk (and statement) as its first: it wins.
    runs.append((n - 1, "f1", 0, n - 1, 5, 2, "w", 1.5, b"\x80r", None, b"e", 1, 2, 3.5))
    events = [
        ("f1", seq, 7, 1.0, 0, "inc", seq, seq, 1, "w", 0, "", None, 0.0) for seq in range(1, n + 1)
    ]
    store.write(RowBatch(flows=[_flow_row()], task_runs=runs, events=events))
    snap = store.load()
    store.close()
    assert sorted(snap.task_runs["f1"]) == runs[: n - 1] + runs[n:]
    assert snap.events["f1"] == events


# ------------------------------------------------- PostgreSQL: schema and fencing


def test_postgres_refuses_a_newer_schema_and_a_foreign_one(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS fleetflow CASCADE")
    PostgresStore(pg_database).close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('fleetflow.epoch', '0', true)")
            conn.execute("UPDATE fleetflow.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this fleetflow") as info:
        PostgresStore(pg_database.replace("://postgres@", "://postgres:s3cret@", 1))
    assert "s3cret" not in str(info.value)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA fleetflow CASCADE")
        conn.execute("CREATE SCHEMA fleetflow")
        conn.execute("CREATE TABLE fleetflow.users (id INTEGER)")
    with pytest.raises(StoreError, match="not a fleetflow database"):
        PostgresStore(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA fleetflow CASCADE")


def test_postgres_version_1_schema_is_upgraded_to_2(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS fleetflow CASCADE")
    PostgresStore(pg_database).close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('fleetflow.epoch', '0', true)")
            conn.execute("UPDATE fleetflow.meta SET value = '1' WHERE key = 'schema_version'")
    PostgresStore(pg_database).close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM fleetflow.meta WHERE key = 'schema_version'")
        assert row.fetchone()[0] == "2"
        conn.execute("DROP SCHEMA fleetflow CASCADE")


def test_postgres_unreachable_is_a_clear_error():
    with pytest.raises(StoreError, match="cannot be reached"):
        PostgresStore("postgresql://postgres:pw@127.0.0.1:9/nowhere")


def test_postgres_two_coordinators_starting_at_once_share_one_schema(pg_database):
    import threading

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS fleetflow CASCADE")
    stores, errors = [], []

    def start():
        try:
            stores.append(PostgresStore(pg_database))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(stores) == 3
    states = [s.campaign(f"127.0.0.1:{i}") for i, s in enumerate(stores)]
    assert sum(s.acquired for s in states) == 1
    for s in stores:
        s.close()


def test_postgres_a_deposed_coordinators_writes_are_refused_by_the_database(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS fleetflow CASCADE")
    old = PostgresStore(pg_database, lease_s=0.2, holder="old")
    new = PostgresStore(pg_database, lease_s=30, holder="new")
    try:
        assert old.campaign("a:1").acquired
        old.write(RowBatch(flows=[_flow_row("kept")]))
        state = new.campaign("b:2")
        assert not state.acquired and state.live and state.address == "a:1"
        import time

        time.sleep(0.3)  # the old one is silent past its lease
        assert new.campaign("b:2").acquired and new.epoch == old.epoch + 1
        with pytest.raises(NotLeader, match="another coordinator took over"):
            old.write(RowBatch(flows=[_flow_row("lost")]))
        with pytest.raises(NotLeader):
            old.renew()
        # Even a write that skips the fence is refused by the tables' triggers.
        with psycopg.connect(pg_database, autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="without the current leadership epoch"):
                conn.execute(
                    "INSERT INTO fleetflow.flows VALUES "
                    "('sneak', 'f', ''::bytea, 1, 0, 0, 'k', NULL, NULL, NULL)"
                )
            with pytest.raises(psycopg.Error, match="without the current leadership epoch"):
                with conn.transaction():
                    conn.execute("SELECT set_config('fleetflow.epoch', %s, true)", (str(1),))
                    conn.execute("DELETE FROM fleetflow.flows")
        new.write(RowBatch(flows=[_flow_row("new")]))
        assert sorted(f[0] for f in new.load().flows) == ["kept", "new"]
        new.release()
        assert old.campaign("a:1").acquired  # released: taken at once
    finally:
        old.close()
        new.close()
