"""The PostgreSQL store's schema and statements: tables, migrations, the fence and its triggers.

Kept apart from :mod:`fleetflow_coordinator.store.postgres` (the store itself,
leadership and commits) so a schema change is a change to this module only:
add a version to ``MIGRATIONS`` and bump ``POSTGRES_SCHEMA_VERSION``.
"""

from __future__ import annotations

from fleetflow_coordinator.store.base import (
    EVENT_COLUMNS,
    FLOW_COLUMNS,
    FLOW_UPDATE_COLUMNS,
    NODE_COLUMNS,
    RANGE_COLUMNS,
    TASK_RUN_COLUMNS,
)

#: Bumped whenever the stored shape changes; see ``MIGRATIONS``.
#: 2 changed what a lease stores (see ``store.base.SCHEMA_VERSION`` 3), no table:
#: it only keeps an older fleetflow off a database it would misread.
POSTGRES_SCHEMA_VERSION = 2

#: pg_advisory_xact_lock key held while the schema is checked or migrated.
SCHEMA_LOCK = 0x666C6F77  # "flow"

#: SQLSTATE raised by the fence and the triggers (a class of its own).
FENCE_SQLSTATE = "FF001"

TABLES = ("flows", "nodes", "task_runs", "events", "expansions", "meta")

VERSION_1 = [
    "CREATE TABLE fleetflow.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE fleetflow.leader (
        id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL, holder TEXT NOT NULL,
        address TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL
    )""",
    "INSERT INTO fleetflow.leader VALUES (1, 0, '', '', '-infinity')",
    """CREATE TABLE fleetflow.flows (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, spec BYTEA NOT NULL, state INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION NOT NULL,
        idempotency_key TEXT NOT NULL, error_task TEXT, error BYTEA, error_message TEXT
    )""",
    """CREATE TABLE fleetflow.nodes (
        flow_id TEXT NOT NULL, node INTEGER NOT NULL, expanded INTEGER NOT NULL,
        failed INTEGER NOT NULL, PRIMARY KEY (flow_id, node)
    )""",
    """CREATE TABLE fleetflow.task_runs (
        id BIGINT PRIMARY KEY, flow_id TEXT NOT NULL, node INTEGER NOT NULL, idx BIGINT NOT NULL,
        state INTEGER NOT NULL, attempt INTEGER NOT NULL, worker_id TEXT NOT NULL,
        leased_at DOUBLE PRECISION NOT NULL, result BYTEA, items BYTEA, error BYTEA,
        code_failures INTEGER NOT NULL, infra_failures INTEGER NOT NULL,
        retry_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX task_runs_flow ON fleetflow.task_runs (flow_id)",
    """CREATE TABLE fleetflow.events (
        flow_id TEXT NOT NULL, seq BIGINT NOT NULL, kind INTEGER NOT NULL,
        time DOUBLE PRECISION NOT NULL, node INTEGER NOT NULL, task_name TEXT NOT NULL,
        task_run_id BIGINT NOT NULL, idx BIGINT NOT NULL, attempt INTEGER NOT NULL,
        worker_id TEXT NOT NULL, count BIGINT NOT NULL, message TEXT NOT NULL, error BYTEA,
        retry_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (flow_id, seq)
    )""",
    """CREATE TABLE fleetflow.expansions (
        flow_id TEXT NOT NULL, node INTEGER NOT NULL, task_name TEXT NOT NULL,
        first_task_run_id BIGINT NOT NULL, count BIGINT NOT NULL, first_seq BIGINT NOT NULL,
        time DOUBLE PRECISION NOT NULL, PRIMARY KEY (flow_id, node)
    )""",
    # The fence (kept for tools and renewals; commits inline the same UPDATE):
    # renew the lease for this epoch under the row lock, or refuse.
    f"""CREATE FUNCTION fleetflow.fence(want BIGINT, lease_s DOUBLE PRECISION)
    RETURNS VOID LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE fleetflow.leader
           SET expires_at = clock_timestamp() + make_interval(secs => lease_s)
         WHERE id = 1 AND epoch = want;
        IF NOT FOUND THEN
            RAISE EXCEPTION
                'fleetflow: epoch % is not the leader''s (another coordinator took over)',
                want USING ERRCODE = '{FENCE_SQLSTATE}';
        END IF;
        PERFORM set_config('fleetflow.epoch', want::TEXT, true);
    END $$""",
    # Every write to a data table must come from a transaction fenced with the
    # current epoch: a deposed coordinator's writes are refused by the database.
    f"""CREATE FUNCTION fleetflow.check_epoch() RETURNS TRIGGER LANGUAGE plpgsql AS $$
    DECLARE
        mine TEXT := current_setting('fleetflow.epoch', true);
    BEGIN
        IF mine IS NULL OR mine = ''
           OR mine::BIGINT <> (SELECT epoch FROM fleetflow.leader WHERE id = 1) THEN
            RAISE EXCEPTION 'fleetflow: write without the current leadership epoch (got %)',
                coalesce(nullif(mine, ''), 'none') USING ERRCODE = '{FENCE_SQLSTATE}';
        END IF;
        RETURN NULL;
    END $$""",
    *(
        f"""CREATE TRIGGER fenced BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
        ON fleetflow.{table} FOR EACH STATEMENT EXECUTE FUNCTION fleetflow.check_epoch()"""
        for table in TABLES
    ),
]

#: {version: statements that bring version - 1 to it}; version 0 is "no schema".
MIGRATIONS: dict[int, list[str]] = {1: VERSION_1, 2: []}

#: Batches with more task run or event rows than this use COPY instead of
#: multi-statement pipelines.
COPY_THRESHOLD = 64

PG_TYPES = {
    "flows": ("text", "text", "bytea", "int4", "float8", "float8", "text", "text", "bytea", "text"),
    "task_runs": (
        "int8",
        "text",
        "int4",
        "int8",
        "int4",
        "int4",
        "text",
        "float8",
        "bytea",
        "bytea",
        "bytea",
        "int4",
        "int4",
        "float8",
    ),
    "events": (
        "text",
        "int8",
        "int4",
        "float8",
        "int4",
        "text",
        "int8",
        "int8",
        "int4",
        "text",
        "int8",
        "text",
        "bytea",
        "float8",
    ),
}


def upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """An INSERT ... ON CONFLICT (key) DO UPDATE statement for one row of ``table``."""
    marks = ", ".join("%s" for _ in columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO fleetflow.{table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


INSERT_FLOW = upsert("flows", FLOW_COLUMNS, ("id",))
UPDATE_FLOW = (
    "UPDATE fleetflow.flows SET "
    + ", ".join(f"{c} = %s" for c in FLOW_UPDATE_COLUMNS[:-1])
    + " WHERE id = %s"
)
INSERT_NODE = upsert("nodes", NODE_COLUMNS, ("flow_id", "node"))
INSERT_TASK_RUN = upsert("task_runs", TASK_RUN_COLUMNS, ("id",))
INSERT_EVENT = upsert("events", EVENT_COLUMNS, ("flow_id", "seq"))
INSERT_EXPANSION = upsert("expansions", RANGE_COLUMNS, ("flow_id", "node"))
MERGE_TASK_RUNS = (
    f"INSERT INTO fleetflow.task_runs ({', '.join(TASK_RUN_COLUMNS)}) "
    f"SELECT DISTINCT ON (id) {', '.join(TASK_RUN_COLUMNS)} FROM staged_task_runs "
    "ORDER BY id, ord DESC ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in TASK_RUN_COLUMNS if c != "id")
)
#: The first statement of every write transaction: renew the lease for our epoch
#: under the row lock and record the epoch the tables' triggers check. No row
#: (the epoch moved on) leaves the setting unset, so the first write is refused
#: by the triggers and the whole transaction aborts.
FENCE = (
    "UPDATE fleetflow.leader SET expires_at = clock_timestamp() + make_interval(secs => %s) "
    "WHERE id = 1 AND epoch = %s RETURNING set_config('fleetflow.epoch', epoch::TEXT, true)"
)
NEXT_ID = (
    "INSERT INTO fleetflow.meta (key, value) VALUES ('next_task_run_id', %s) "
    "ON CONFLICT (key) DO UPDATE SET value = "
    "GREATEST(fleetflow.meta.value::BIGINT, EXCLUDED.value::BIGINT)::TEXT"
)
