"""SqliteStore: the embedded default, stdlib ``sqlite3`` in WAL mode.

Durability: with ``synchronous=NORMAL`` (the default) a committed batch
survives a crash or SIGKILL of the coordinator process; ``synchronous=FULL``
also survives power loss, at the cost of an fsync per group commit
(see https://www.sqlite.org/pragma.html#pragma_synchronous).

File checks (issue 11): a new database is built under a temporary name and
linked into place only once its schema is complete, so a file at the path is
either a whole fleetflow database or not ours. An existing file that is
empty (0 bytes), shorter than its header says, not SQLite, or SQLite without
fleetflow's tables is refused with an error naming it: a truncated database
never silently becomes an empty one.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

from fleetflow_coordinator.store.base import (
    EVENT_COLUMNS,
    FLOW_COLUMNS,
    FLOW_UPDATE_COLUMNS,
    NODE_COLUMNS,
    RANGE_COLUMNS,
    RESERVED_META,
    SCHEMA_VERSION,
    TASK_RUN_COLUMNS,
    RowBatch,
    RowSnapshot,
    Store,
    StoreError,
    expand_event_runs,
    merge_expansions,
)
from fleetflow_coordinator.store.memory import MemoryStore

__all__ = ["SqliteStore", "check_database_file", "open_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flows (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, spec BLOB NOT NULL, state INTEGER NOT NULL,
    created_at REAL NOT NULL, ended_at REAL NOT NULL, idempotency_key TEXT NOT NULL,
    error_task TEXT, error BLOB, error_message TEXT
);
CREATE TABLE IF NOT EXISTS nodes (
    flow_id TEXT NOT NULL, node INTEGER NOT NULL, expanded INTEGER NOT NULL,
    failed INTEGER NOT NULL, PRIMARY KEY (flow_id, node)
);
CREATE TABLE IF NOT EXISTS task_runs (
    id INTEGER PRIMARY KEY, flow_id TEXT NOT NULL, node INTEGER NOT NULL, idx INTEGER NOT NULL,
    state INTEGER NOT NULL, attempt INTEGER NOT NULL, worker_id TEXT NOT NULL,
    leased_at REAL NOT NULL, result BLOB, items BLOB, error BLOB,
    code_failures INTEGER NOT NULL, infra_failures INTEGER NOT NULL, retry_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS task_runs_flow ON task_runs (flow_id);
CREATE TABLE IF NOT EXISTS events (
    flow_id TEXT NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL, time REAL NOT NULL,
    node INTEGER NOT NULL, task_name TEXT NOT NULL, task_run_id INTEGER NOT NULL,
    idx INTEGER NOT NULL, attempt INTEGER NOT NULL, worker_id TEXT NOT NULL,
    count INTEGER NOT NULL, message TEXT NOT NULL, error BLOB, retry_at REAL NOT NULL,
    PRIMARY KEY (flow_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expansions (
    flow_id TEXT NOT NULL, node INTEGER NOT NULL, task_name TEXT NOT NULL,
    first_task_run_id INTEGER NOT NULL, count INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    time REAL NOT NULL, PRIMARY KEY (flow_id, node)
) WITHOUT ROWID;
"""


def _insert(table: str, columns: tuple[str, ...], verb: str = "INSERT OR REPLACE") -> str:
    marks = ", ".join("?" for _ in columns)
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({marks})"


_INSERT_FLOW = _insert("flows", FLOW_COLUMNS)
_UPDATE_FLOW = (
    "UPDATE flows SET " + ", ".join(f"{c} = ?" for c in FLOW_UPDATE_COLUMNS[:-1]) + " WHERE id = ?"
)
_INSERT_NODE = _insert("nodes", NODE_COLUMNS)
_INSERT_EXPANSION = _insert("expansions", RANGE_COLUMNS)

#: The event rows of a run (``EVENT_RUN_COLUMNS``), made by SQLite itself: a run
#: of a lease batch's STARTED or a report's COMPLETED events is one statement,
#: with no row built, bound or stepped one by one from Python.
_INSERT_EVENT_RUN = (
    "WITH RECURSIVE run(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM run WHERE i + 1 < ?) "
    f"INSERT OR REPLACE INTO events ({', '.join(EVENT_COLUMNS)}) "
    "SELECT ?, ? + i, ?, ?, ?, ?, ? + i, ? + i, ?, ?, 0, '', NULL, 0.0 FROM run"
)
#: Runs shorter than this go in as rows (a statement of their own costs more).
_RUN_STATEMENT_EVENTS = 8

#: Rows per multi-row INSERT statement, largest first (see :func:`_insert_many`).
_CHUNK_ROWS = (1024, 256, 64, 16, 4, 1)


def _insert_many(
    db: sqlite3.Connection,
    max_variables: int,
    table: str,
    columns: tuple[str, ...],
    rows: Sequence[tuple],
) -> None:
    """``INSERT OR REPLACE`` every row, up to 1,024 rows per statement.

    The same rows in the same order as ``executemany`` of a one-row
    statement, for about two thirds of the CPU: every run of a statement
    has a fixed cost (reset, the VM's start, the sqlite3 module's own work
    and GIL hand-off around each step), paid here once per chunk of rows.
    Chunks come in a few fixed sizes, so the connection's statement cache
    keeps each statement compiled.

    Args:
        db: The connection, inside a transaction.
        max_variables: The most ``?`` one statement may hold (SQLite's limit).
        table: Table name.
        columns: Its columns, in the rows' order.
        rows: Tuples of ``len(columns)`` values.
    """
    width = len(columns)
    n = len(rows)
    start = 0
    for k in _CHUNK_ROWS:
        if k * width > max_variables and k > 1:
            continue
        full = (n - start) // k * k
        if not full:
            continue
        sql = _multi_insert(table, columns, k)
        if k == 1:
            db.executemany(sql, rows[start:])
        else:
            values = iter(chain.from_iterable(rows[start : start + full]))
            db.executemany(sql, zip(*[values] * (width * k), strict=True))
        start += full


_STATEMENTS: dict[tuple[str, int], str] = {}


def _multi_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    """``INSERT OR REPLACE INTO table (columns) VALUES (?, ...), ...`` of ``rows`` rows."""
    sql = _STATEMENTS.get((table, rows))
    if sql is None:
        one = "(" + ", ".join("?" for _ in columns) + ")"
        sql = _STATEMENTS[(table, rows)] = (
            f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join([one] * rows)
        )
    return sql


class SqliteStore(Store):
    """Flow state in one SQLite file.

    Args:
        path: Database file; its folder is created if missing.
        synchronous: SQLite ``synchronous`` pragma: ``"NORMAL"`` or ``"FULL"``.

    Raises:
        StoreError: the path cannot be created or written, the file is not a
            fleetflow database (or is corrupt), or its schema version is newer
            or unknown. Never falls back to memory.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous={synchronous!r}: must be NORMAL or FULL")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"database folder {self.path.parent} cannot be created: {exc}"
            ) from None
        if not self.path.exists():
            self._create(synchronous.upper())
        check_database_file(self.path)
        self._db = self._connect(self.path, synchronous.upper())
        #: The most ``?`` one statement may hold (999 in SQLite before 3.32).
        self._max_variables = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        try:
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(
                f"database {self.path} is corrupt, unwritable or not a fleetflow database: {exc}"
            ) from None
        except StoreError:
            self._db.close()
            raise

    def _connect(self, path: Path, synchronous: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"database {path} cannot be opened: {exc}") from None
        try:
            db.execute(f"PRAGMA synchronous = {synchronous}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"database {path}: WAL mode unavailable (got {mode})")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(
                f"database {path} is corrupt, unwritable or not a fleetflow database: {exc}"
            ) from None
        except StoreError:
            db.close()
            raise
        return db

    def _create(self, synchronous: str) -> None:
        """Build a new database under a temporary name, then link it into place.

        Only a complete database ever appears at ``self.path``; if another
        coordinator created one meanwhile, it is used (and checked) instead.
        """
        tmp = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
        try:
            db = self._connect(tmp, synchronous)
            try:
                db.execute("BEGIN")
                for statement in _statements():
                    db.execute(statement)
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path} cannot be created: {exc}") from None
            finally:
                db.close()  # checkpoints the WAL into the file
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another coordinator created it first: use theirs
            except OSError as exc:
                raise StoreError(f"database {self.path} cannot be created: {exc}") from None
        finally:
            for leftover in (
                tmp,
                tmp.with_name(tmp.name + "-wal"),
                tmp.with_name(tmp.name + "-shm"),
            ):
                leftover.unlink(missing_ok=True)

    def _check_schema(self) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            raise StoreError(
                f"database {self.path} is an SQLite file without fleetflow's tables; refusing "
                "to start on it as an empty store (move it away, or pass another --db)"
            )
        if "meta" not in tables:
            raise StoreError(
                f"database {self.path} is not a fleetflow database (tables: {sorted(tables)})"
            )
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version is None:
            raise StoreError(f"database {self.path} records no schema version; refusing to use it")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this "
                f"fleetflow understands ({SCHEMA_VERSION}); upgrade fleetflow"
            )
        if version in (1, 2):  # 2 added the expansions table; 3 changed no table
            db.execute("BEGIN")
            for statement in _statements():
                db.execute(statement)
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
            db.execute("COMMIT")
            return
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has unknown schema version {version} "
                f"(this fleetflow uses {SCHEMA_VERSION})"
            )

    def load(self) -> RowSnapshot:
        """Read every stored row.

        Raises:
            StoreError: the file is corrupt or truncated (SQLite cannot read it).
        """
        try:
            return self._load()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"database {self.path} cannot be read (corrupt or truncated): {exc}"
            ) from None

    def _load(self) -> RowSnapshot:
        db = self._db
        flows = db.execute(
            f"SELECT {', '.join(FLOW_COLUMNS)} FROM flows ORDER BY created_at"
        ).fetchall()
        nodes: dict[str, list[tuple]] = {}
        for row in db.execute(f"SELECT {', '.join(NODE_COLUMNS)} FROM nodes"):
            nodes.setdefault(row[0], []).append(row)
        task_runs: dict[str, list[tuple]] = {}
        for row in db.execute(f"SELECT {', '.join(TASK_RUN_COLUMNS)} FROM task_runs"):
            task_runs.setdefault(row[1], []).append(row)
        events: dict[str, list[tuple]] = {}
        for row in db.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY flow_id, seq"
        ):
            events.setdefault(row[0], []).append(row)
        expansions = db.execute(f"SELECT {', '.join(RANGE_COLUMNS)} FROM expansions").fetchall()
        merge_expansions(expansions, task_runs, events)
        row = db.execute("SELECT value FROM meta WHERE key = 'next_task_run_id'").fetchone()
        meta = {
            k: v for k, v in db.execute("SELECT key, value FROM meta") if k not in RESERVED_META
        }
        return RowSnapshot(flows, nodes, task_runs, events, int(row[0]) if row else 0, meta)

    def write(self, batch: RowBatch) -> None:
        """Write one batch in one transaction.

        Raises:
            StoreError: SQLite failed; the transaction was rolled back.
        """
        db = self._db
        try:
            db.execute("BEGIN")
            if batch.flows:
                db.executemany(_INSERT_FLOW, batch.flows)
            if batch.flow_updates:
                db.executemany(_UPDATE_FLOW, batch.flow_updates)
            if batch.nodes:
                db.executemany(_INSERT_NODE, batch.nodes)
            if batch.task_runs:
                _insert_many(
                    db, self._max_variables, "task_runs", TASK_RUN_COLUMNS, batch.task_runs
                )
            events = batch.events
            if batch.event_runs:
                events = list(events)
                for run in batch.event_runs:
                    if run[2] < _RUN_STATEMENT_EVENTS:  # cheaper as rows of a multi-row INSERT
                        events.extend(expand_event_runs([run]))
                    else:
                        db.execute(_INSERT_EVENT_RUN, run[2:3] + run[:2] + run[3:])
            if events:
                _insert_many(db, self._max_variables, "events", EVENT_COLUMNS, events)
            if batch.expansions:
                db.executemany(_INSERT_EXPANSION, batch.expansions)
            if batch.next_task_run_id:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_task_run_id', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = "
                    "MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                    (str(batch.next_task_run_id),),
                )
            for key, value in batch.meta.items():
                if value is None:
                    db.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
            for flow_id in batch.pruned:
                for table, column in (
                    ("expansions", "flow_id"),
                    ("events", "flow_id"),
                    ("task_runs", "flow_id"),
                    ("nodes", "flow_id"),
                    ("flows", "id"),
                ):
                    db.execute(f"DELETE FROM {table} WHERE {column} = ?", (flow_id,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"database {self.path}: write failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._db.close()


#: The first 16 bytes of every SQLite 3 database file.
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_database_file(path: Path) -> None:
    """Refuse a file that cannot be a whole fleetflow SQLite database.

    Checks, without opening it through SQLite: it is not empty, starts with
    the SQLite header, and (when no write-ahead log holds newer pages) is at
    least as long as the page count its header records
    (https://www.sqlite.org/fileformat.html#the_database_header).

    Raises:
        StoreError: naming the path and what is wrong with it.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise StoreError(f"database {path} cannot be read: {exc}") from None
    if size == 0:
        raise StoreError(
            f"database {path} is empty (0 bytes), perhaps truncated by a full disk; refusing "
            "to start on it as an empty store (restore it from a backup, or delete it to "
            "start afresh)"
        )
    if not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"database {path} is not an SQLite file (not a fleetflow database)")
    if len(header) < 100:
        raise StoreError(f"database {path} is truncated ({size} bytes, shorter than its header)")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages = struct.unpack(">II", header[24:32])
    valid_for = struct.unpack(">I", header[92:96])[0]
    wal = path.with_name(path.name + "-wal")
    wal_has_pages = wal.exists() and wal.stat().st_size > 32
    if pages and valid_for == change_counter and not wal_has_pages and size < pages * page_size:
        raise StoreError(
            f"database {path} is truncated: {size} bytes, but its header records "
            f"{pages} pages of {page_size} bytes; restore it from a backup"
        )


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


def open_store(db: str, *, synchronous: str = "NORMAL", leader_lease_s: float = 10.0) -> Store:
    """Open the store a ``--db`` value names.

    Args:
        db: ``":memory:"``, a ``postgresql://`` URL, or an SQLite file path.
        synchronous: ``"NORMAL"`` or ``"FULL"``: SQLite's ``synchronous`` pragma,
            PostgreSQL's ``synchronous_commit`` ``off`` or ``on``.
        leader_lease_s: The leadership lease, seconds (PostgreSQL only).

    Raises:
        StoreError: see :class:`SqliteStore` and ``PostgresStore``.
    """
    if db == ":memory:":
        return MemoryStore()
    if db.startswith(("postgresql://", "postgres://")):
        from fleetflow_coordinator.store.postgres import PostgresStore

        return PostgresStore(db, lease_s=leader_lease_s, synchronous=synchronous)
    return SqliteStore(db, synchronous=synchronous)
