"""PostgresStore: flow state in a PostgreSQL database, shared by hot standby coordinators.

``fleetflow coordinator --db postgresql://USER@HOST:PORT/DBNAME`` keeps the same
rows as :class:`~fleetflow_coordinator.store.sqlite.SqliteStore`, in tables of
the schema ``fleetflow`` of that database, so it can live beside other
applications' tables.

Why psycopg 3 (not asyncpg): the store protocol is synchronous and runs on
the coordinator's one store thread, which psycopg's blocking API fits
directly; it speaks COPY (binary) for big group commits and libpq's
pipeline mode for small ones (one network round trip per commit); and it
uses libpq, so connection strings, ``PG*`` environment variables,
``.pgpass`` and ``sslmode`` behave as in ``psql``, which is what the people
who run the database already use.

**Leadership and fencing.** The row ``fleetflow.leader`` holds the leadership
lease: ``(epoch, holder, address, expires_at)``, timed by the database's
clock. A coordinator becomes active by bumping ``epoch`` while the lease has
expired (:meth:`PostgresStore.campaign`); every write transaction of the
active one starts with ``fleetflow.fence(epoch, lease)``, which renews the
lease for that epoch under the row's lock and raises if the epoch is no
longer the leader's. Every data table also carries a statement trigger that
refuses any write in a transaction that has not been fenced with the
current epoch. So a deposed coordinator's writes are refused by the
database itself, and a takeover waits for the commit in flight (it needs the
same row lock).

Schema versions: ``fleetflow.meta`` records ``schema_version``; migrations
are applied in order at start under an advisory lock (several coordinators
may start at once). A newer version is refused.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg

from fleetflow_coordinator.store.base import (
    EVENT_COLUMNS,
    FLOW_COLUMNS,
    NODE_COLUMNS,
    RANGE_COLUMNS,
    RESERVED_META,
    TASK_RUN_COLUMNS,
    NotLeader,
    RowBatch,
    RowSnapshot,
    StoreError,
    merge_expansions,
)
from fleetflow_coordinator.store.pg_schema import (
    COPY_THRESHOLD,
    FENCE,
    FENCE_SQLSTATE,
    INSERT_EVENT,
    INSERT_EXPANSION,
    INSERT_FLOW,
    INSERT_NODE,
    INSERT_TASK_RUN,
    MERGE_TASK_RUNS,
    MIGRATIONS,
    NEXT_ID,
    PG_TYPES,
    POSTGRES_SCHEMA_VERSION,
    SCHEMA_LOCK,
    UPDATE_FLOW,
)

__all__ = ["LeaderState", "PostgresStore", "POSTGRES_SCHEMA_VERSION", "redact"]


class _Unfenced(Exception):
    """Rolls a COPY transaction back when the fence found no row for our epoch."""


def redact(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (for messages and logs)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


@dataclass(frozen=True, slots=True)
class LeaderState:
    """What a campaign found in the leadership row.

    Attributes:
        acquired: This coordinator holds the leadership now (with ``epoch``).
        epoch: The current epoch (this coordinator's when ``acquired``).
        holder: The id of the coordinator holding the lease ("" when none ever did).
        address: The ``HOST:PORT`` the holder serves on.
        live: The holder's lease has not expired (by the database's clock).
    """

    acquired: bool
    epoch: int
    holder: str
    address: str
    live: bool


class PostgresStore:
    """Flow state in PostgreSQL; see the module docstring for fencing.

    Args:
        dsn: A libpq connection string or ``postgresql://`` URL.
        lease_s: The leadership lease, seconds: a silent active coordinator
            is replaced this long after its last successful write or renewal.
        holder: This coordinator's id in the leadership row (random by default).
        synchronous: ``"NORMAL"`` (default): commits return once the server
            has them (``synchronous_commit = off``): they survive any failure of
            a coordinator, and a crash of the database server loses at most its
            last fraction of a second (never consistency), as SQLite's NORMAL
            loses the last commits on power loss. ``"FULL"``: commits wait for
            the server's WAL flush (``synchronous_commit = on``, and synchronous
            replicas if the server has them).

    Raises:
        StoreError: the database cannot be reached, is not a fleetflow
            database (a ``fleetflow`` schema holding other tables), or has a
            newer schema version. The password never appears in the message.
    """

    #: Batches of at most this many rows are written on the event loop: one
    #: local round trip costs less than two thread hops (W3's latency); larger
    #: ones, and every other call, go to the store thread. A hung network is
    #: bounded by ``tcp_user_timeout`` (the lease), after which this
    #: coordinator has stepped down anyway.
    inline_writes = 16
    #: Several coordinators share it: leadership decides which one writes.
    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        lease_s: float = 10.0,
        holder: str | None = None,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous={synchronous!r}: must be NORMAL or FULL")
        #: PostgreSQL's synchronous_commit for the coordinator's transactions.
        self.synchronous_commit = "on" if synchronous.upper() == "FULL" else "off"
        self.dsn = dsn
        self.name = redact(dsn)
        self.lease_s = float(lease_s)
        self.holder = holder or uuid.uuid4().hex[:12]
        #: The epoch this coordinator writes with; 0 until it is elected.
        self.epoch = 0
        #: time.monotonic() when the last successful fence (or election) was
        #: sent: the lease is ours until at least that plus ``lease_s``.
        self.fenced_at = 0.0
        self._lock = threading.Lock()  # one store call at a time, whatever the caller
        self._conn: psycopg.Connection | None = None
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._lost()
            raise

    # ------------------------------------------------------------ connection

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=10,
                # A cut-off database fails calls within the lease, not never.
                keepalives=1,
                keepalives_idle=max(1, int(self.lease_s / 2)),
                keepalives_interval=1,
                keepalives_count=3,
                tcp_user_timeout=int(self.lease_s * 1000),
            )
        except psycopg.Error as exc:
            raise StoreError(f"database {self.name} cannot be reached: {exc}".strip()) from None
        conn.prepare_threshold = 1  # the same few statements, every commit
        try:
            conn.execute(
                "SELECT set_config('synchronous_commit', %s, false)", (self.synchronous_commit,)
            )
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"database {self.name}: cannot configure the session: {exc}") from None
        return conn

    def _db(self) -> psycopg.Connection:
        """The connection, reconnecting after a lost one."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _lost(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _migrate(self) -> None:
        conn = self._db()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                tables = {
                    r[0]
                    for r in conn.execute(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'fleetflow'"
                    )
                }
                if tables and "meta" not in tables:
                    raise StoreError(
                        f"database {self.name}: schema 'fleetflow' holds other tables "
                        f"({sorted(tables)}); it is not a fleetflow database"
                    )
                version = 0
                if tables:
                    row = conn.execute(
                        "SELECT value FROM fleetflow.meta WHERE key = 'schema_version'"
                    ).fetchone()
                    if row is None or not str(row[0]).isdigit():
                        raise StoreError(
                            f"database {self.name} records no schema version; refusing to use it"
                        )
                    version = int(row[0])
                if version > POSTGRES_SCHEMA_VERSION:
                    raise StoreError(
                        f"database {self.name} has schema version {version}, newer than this "
                        f"fleetflow understands ({POSTGRES_SCHEMA_VERSION}); upgrade fleetflow"
                    )
                if version == POSTGRES_SCHEMA_VERSION:
                    return
                if version == 0:
                    conn.execute("CREATE SCHEMA IF NOT EXISTS fleetflow")
                for step in range(version + 1, POSTGRES_SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        conn.execute(statement)
                    # Migrations write as whoever holds the epoch now (the fence
                    # triggers ask for it); the schema lock keeps them alone.
                    conn.execute(
                        "SELECT set_config('fleetflow.epoch', "
                        "(SELECT epoch FROM fleetflow.leader WHERE id = 1)::TEXT, true)"
                    )
                    conn.execute(
                        "INSERT INTO fleetflow.meta (key, value) VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (str(step),),
                    )
        except psycopg.Error as exc:
            raise StoreError(f"database {self.name}: schema check failed: {exc}") from None

    # ------------------------------------------------------------ leadership

    def campaign(self, address: str) -> LeaderState:
        """Take the leadership if its lease has expired; otherwise report who holds it.

        Args:
            address: The ``HOST:PORT`` to record as the active coordinator's.

        Raises:
            StoreError: the database cannot be reached.
        """
        with self._lock:
            sent = time.monotonic()
            try:
                conn = self._db()
                row = conn.execute(
                    "UPDATE fleetflow.leader SET epoch = epoch + 1, holder = %s, address = %s, "
                    "expires_at = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE id = 1 AND expires_at < clock_timestamp() RETURNING epoch",
                    (self.holder, address, self.lease_s),
                ).fetchone()
                if row is not None:
                    self.epoch = int(row[0])
                    self.fenced_at = sent
                    return LeaderState(True, self.epoch, self.holder, address, True)
                epoch, holder, current, live = conn.execute(
                    "SELECT epoch, holder, address, expires_at >= clock_timestamp() "
                    "FROM fleetflow.leader WHERE id = 1"
                ).fetchone()
            except psycopg.OperationalError as exc:
                self._lost()
                raise StoreError(f"database {self.name} cannot be reached: {exc}") from None
            except psycopg.Error as exc:
                raise StoreError(f"database {self.name}: campaign failed: {exc}") from None
            self.epoch = 0
            return LeaderState(False, int(epoch), holder, current, bool(live))

    def renew(self) -> None:
        """Renew the leadership lease for this coordinator's epoch.

        Raises:
            NotLeader: another coordinator took over, or the database is unreachable.
        """
        with self._lock:
            sent = time.monotonic()
            try:
                conn = self._db()
                conn.execute("SELECT fleetflow.fence(%s, %s)", (self.epoch, self.lease_s))
            except psycopg.Error as exc:
                self._refused(exc)
            self.fenced_at = sent

    def release(self) -> None:
        """Give the leadership up now (a graceful stop): a standby takes over at once."""
        with self._lock:
            if not self.epoch:
                return
            try:
                self._db().execute(
                    "UPDATE fleetflow.leader SET expires_at = '-infinity' "
                    "WHERE id = 1 AND epoch = %s",
                    (self.epoch,),
                )
            except psycopg.Error:
                pass  # the lease runs out by itself
            self.epoch = 0

    def _refused(self, exc: psycopg.Error) -> None:
        """Turn a failed fenced call into NotLeader or StoreError; always raises."""
        epoch, self.epoch = self.epoch, 0
        if getattr(exc, "sqlstate", None) == FENCE_SQLSTATE:
            raise NotLeader(
                f"database {self.name} refused epoch {epoch}: another coordinator took over"
            ) from None
        if isinstance(exc, psycopg.OperationalError) or self._conn is None or self._conn.broken:
            self._lost()
            raise NotLeader(
                f"database {self.name} is unreachable; stepping down (epoch {epoch}): {exc}"
            ) from None
        self.epoch = epoch  # a bad batch, not a lost leadership: the caller stops
        raise StoreError(f"database {self.name}: write failed: {exc}") from exc

    # --------------------------------------------------------------- the store

    def load(self) -> RowSnapshot:
        """Read every stored row.

        Raises:
            StoreError: the database cannot be read.
        """
        with self._lock:
            try:
                return self._load()
            except psycopg.OperationalError as exc:
                self._lost()
                raise StoreError(f"database {self.name} cannot be read: {exc}") from None
            except psycopg.Error as exc:
                raise StoreError(f"database {self.name} cannot be read: {exc}") from None

    def _load(self) -> RowSnapshot:
        conn = self._db()
        with conn.transaction(), conn.cursor(binary=True) as cur:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            flows = cur.execute(
                f"SELECT {', '.join(FLOW_COLUMNS)} FROM fleetflow.flows ORDER BY created_at"
            ).fetchall()
            nodes: dict[str, list[tuple]] = {}
            for row in cur.execute(f"SELECT {', '.join(NODE_COLUMNS)} FROM fleetflow.nodes"):
                nodes.setdefault(row[0], []).append(row)
            task_runs: dict[str, list[tuple]] = {}
            for row in cur.execute(
                f"SELECT {', '.join(TASK_RUN_COLUMNS)} FROM fleetflow.task_runs"
            ):
                task_runs.setdefault(row[1], []).append(row)
            events: dict[str, list[tuple]] = {}
            for row in cur.execute(
                f"SELECT {', '.join(EVENT_COLUMNS)} FROM fleetflow.events ORDER BY flow_id, seq"
            ):
                events.setdefault(row[0], []).append(row)
            expansions = cur.execute(
                f"SELECT {', '.join(RANGE_COLUMNS)} FROM fleetflow.expansions"
            ).fetchall()
            row = cur.execute(
                "SELECT value FROM fleetflow.meta WHERE key = 'next_task_run_id'"
            ).fetchone()
            meta = {
                k: v
                for k, v in cur.execute("SELECT key, value FROM fleetflow.meta")
                if k not in RESERVED_META
            }
        merge_expansions(expansions, task_runs, events)
        return RowSnapshot(flows, nodes, task_runs, events, int(row[0]) if row else 0, meta)

    def write(self, batch: RowBatch) -> None:
        """Write one batch in one transaction, fenced by this coordinator's epoch.

        Small batches go in one pipeline (one network round trip); task run and
        event rows of large ones are sent with binary COPY.

        Raises:
            NotLeader: the database refused the epoch (another coordinator took
                over) or cannot be reached; nothing of the batch is stored.
            StoreError: any other failure; nothing of the batch is stored.
        """
        batch.take_event_runs()  # rows: COPY and the pipeline write rows
        with self._lock:
            sent = time.monotonic()
            try:
                conn = self._db()
                if max(len(batch.task_runs), len(batch.events)) > COPY_THRESHOLD:
                    try:
                        fenced = self._write_copy(conn, batch)
                    except _Unfenced:
                        fenced = False
                else:
                    fenced = self._write_pipeline(conn, batch)
            except psycopg.Error as exc:
                self._rollback()
                self._refused(exc)
            if not fenced:  # nothing was written (the triggers would have refused it)
                epoch, self.epoch = self.epoch, 0
                raise NotLeader(
                    f"database {self.name} refused epoch {epoch}: another coordinator took over"
                )
            self.fenced_at = sent

    def _write_rows(
        self, conn: psycopg.Connection, batch: RowBatch, task_runs: list, events: list
    ) -> psycopg.Cursor:
        """Send the fence and the batch's row statements; return the fence's cursor."""
        fence = conn.cursor()
        fence.execute(FENCE, (self.lease_s, self.epoch))
        cur = conn.cursor()
        if batch.flows:
            cur.executemany(INSERT_FLOW, batch.flows)
        if batch.flow_updates:
            cur.executemany(UPDATE_FLOW, batch.flow_updates)
        if batch.nodes:
            cur.executemany(INSERT_NODE, batch.nodes)
        if task_runs:
            cur.executemany(INSERT_TASK_RUN, task_runs)
        if events:
            cur.executemany(INSERT_EVENT, events)
        if batch.expansions:
            cur.executemany(INSERT_EXPANSION, batch.expansions)
        if batch.next_task_run_id:
            cur.execute(NEXT_ID, (str(batch.next_task_run_id),))
        for key, value in batch.meta.items():
            if value is None:
                cur.execute("DELETE FROM fleetflow.meta WHERE key = %s", (key,))
            else:
                cur.execute(
                    "INSERT INTO fleetflow.meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
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
                cur.execute(f"DELETE FROM fleetflow.{table} WHERE {column} = %s", (flow_id,))
        return fence

    def _write_pipeline(self, conn: psycopg.Connection, batch: RowBatch) -> bool:
        """Write a small batch as one pipeline: prepared statements, one network round trip.

        Returns:
            Whether the fence found our epoch (when it did not, every write was
            refused by the tables' triggers and the transaction rolled back).
        """
        with conn.pipeline():
            conn.execute("BEGIN")
            fence = self._write_rows(conn, batch, batch.task_runs, batch.events)
            conn.execute("COMMIT")
        return fence.fetchone() is not None

    def _rollback(self) -> None:
        """End a transaction a failed pipeline left open (explicit BEGIN)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                self._lost()

    def _write_copy(self, conn: psycopg.Connection, batch: RowBatch) -> bool:
        """Write a large batch with COPY; False (nothing written) if the fence found no row."""
        with conn.transaction():
            fence = self._write_rows(conn, batch, [], [])  # fence, then the small tables
            if fence.fetchone() is None:
                raise _Unfenced
            cur = conn.cursor()
            if batch.task_runs:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS staged_task_runs "
                    "(LIKE fleetflow.task_runs, ord BIGSERIAL) ON COMMIT DELETE ROWS"
                )
                with cur.copy(
                    f"COPY staged_task_runs ({', '.join(TASK_RUN_COLUMNS)}) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(PG_TYPES["task_runs"])
                    for row in batch.task_runs:
                        copy.write_row(row)
                cur.execute(MERGE_TASK_RUNS)
            if batch.events:
                with cur.copy(
                    f"COPY fleetflow.events ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(PG_TYPES["events"])
                    for row in batch.events:
                        copy.write_row(row)
        return True

    def close(self) -> None:
        """Close the connection (the leadership, if held, runs out by itself)."""
        with self._lock:
            self._lost()
