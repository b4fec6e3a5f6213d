"""The PostgreSQL results store: one database shared by several sink replicas, seq in commit order."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from pipeline_core.events import FeedbackEvent, PredictionEvent, Record
from results_sink.notify import CHANNEL, ResultListener
from results_sink.store import StoredFeedback, StoredResult, StoreError, TableReads

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock keys (any two bigints that nothing else in the database uses).
SCHEMA_LOCK = 0x5EED_0001  # serialises CREATE TABLE IF NOT EXISTS of replicas starting together
SEQ_LOCK = 0x5EED_0002  # serialises result writers, so seq order is commit order

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    event JSONB NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_results (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    event JSONB NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source TEXT NOT NULL,
    job_id TEXT,
    report TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    UNIQUE (source, received_at)
);
"""
_COLUMNS = "seq, job_id, event::text, stored_at"
POOL_MAX_SIZE = 4  # the consumer thread and a few request threads; connections are held for one statement
OPEN_TIMEOUT_S = 30.0  # at start, how long the database may take to come up


def describe(url: str) -> str:
    """`user@host:port/dbname` of a connection URL, without the password, for logs."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable URL>"
    where = f"{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"
    return f"{info.get('user', '')}@{where}"


class PostgresResultStore(TableReads):
    """A `ResultStore` in PostgreSQL, safe to share between threads, processes and hosts."""

    def __init__(self, url: str, pool: ConnectionPool) -> None:
        self.url = url
        self._pool = pool
        self._closed = False

    @classmethod
    def open(
        cls, url: str, max_size: int = POOL_MAX_SIZE, timeout_s: float = OPEN_TIMEOUT_S
    ) -> PostgresResultStore:
        """Connect (a small pool, retrying for up to `timeout_s`) and create the schema if it is not there."""
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            name="results-store",
            check=ConnectionPool.check_connection,  # a server restart costs one failed check, not a request
        )
        try:
            pool.open(wait=True, timeout=timeout_s)
            with pool.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                conn.execute(SCHEMA)  # a constant, not a query built from input
                version = conn.info.parameter_status("server_version")
        except psycopg.Error as e:
            pool.close()
            raise StoreError(f"cannot open results store {describe(url)}: {e}") from e
        logger.info("results store: PostgreSQL %s at %s", version, describe(url))
        return cls(url, pool)

    @contextmanager
    def _connection(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction, committed on exit; psycopg errors become `StoreError`."""
        if self._closed:
            raise StoreError("results store is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as e:
            # Data the server refuses (a NUL byte in text, a constraint) is refused every time: that record's
            # alone. Anything else (a lost connection, a standby that is read-only after a failover) may pass later.
            retriable = not isinstance(e, (psycopg.DataError, psycopg.IntegrityError))
            raise StoreError(f"results store {action} failed: {e}", retriable=retriable) from e

    def write_batch(self, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        """Insert each event unless its job is stored already; return the new ones, in seq order.

        The advisory lock makes writers take turns from their first seq to their commit, so a seq is never
        visible before a smaller one that is still to commit; NOTIFY is sent when the transaction commits.
        """
        stored_at = time.time()
        new: list[StoredResult] = []
        with self._connection("write") as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SEQ_LOCK,))
            cur.executemany(
                "INSERT INTO results (job_id, event, stored_at) VALUES (%s, %s::jsonb, %s) "
                "ON CONFLICT (job_id) DO NOTHING RETURNING seq",
                [(e.job_id, e.model_dump_json(), stored_at) for e in events],
                returning=True,
            )
            for event in events:  # one result set per statement: a row when inserted, none on conflict
                row = cur.fetchone()
                if row is not None:
                    new.append(StoredResult(row[0], event.job_id, event, stored_at))
                cur.nextset()
            if new:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(new[-1].seq)))
        return new

    def write_shadow_batch(self, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        """A shadow model's results, in a table of their own (no seq order needed: no stream follows them)."""
        stored_at = time.time()
        new: list[StoredResult] = []
        with self._connection("write") as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO shadow_results (job_id, event, stored_at) VALUES (%s, %s::jsonb, %s) "
                "ON CONFLICT (job_id) DO NOTHING RETURNING seq",
                [(e.job_id, e.model_dump_json(), stored_at) for e in events],
                returning=True,
            )
            for event in events:
                row = cur.fetchone()
                if row is not None:
                    new.append(StoredResult(row[0], event.job_id, event, stored_at))
                cur.nextset()
        return new

    def recent(self, limit: int, *, shadow: bool = False) -> list[StoredResult]:
        """The newest `limit` results (the shadow model's with `shadow`), newest first."""
        table = "shadow_results" if shadow else "results"
        with self._connection("read") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {table} ORDER BY seq DESC LIMIT %s",  # noqa: S608 - our table names
                (limit,),
            ).fetchall()
        return [_result(row) for row in rows]

    def _of(self, table: str, job_ids: Sequence[str], after_seq: int) -> list[StoredResult]:
        if not job_ids:
            return []
        with self._connection("read") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {table} WHERE seq > %s AND job_id = ANY(%s) ORDER BY seq",  # noqa: S608 - our table names and constant columns
                (after_seq, list(dict.fromkeys(job_ids))),
            ).fetchall()
        return [_result(row) for row in rows]

    def results_since(self, after_seq: int, limit: int) -> list[StoredResult]:
        """Up to `limit` results of any job with `seq > after_seq`, in seq order (the change feed's read)."""
        with self._connection("read") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM results WHERE seq > %s ORDER BY seq LIMIT %s",  # noqa: S608 - constant columns
                (after_seq, limit),
            ).fetchall()
        return [_result(row) for row in rows]

    def last_seq(self) -> int:
        """The largest seq stored (0 when none)."""
        with self._connection("read") as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM results").fetchone()
        return int(row[0]) if row is not None else 0

    def add_feedback(self, batch: Sequence[Record[FeedbackEvent]]) -> int:
        """Store reports, keyed by their Kafka coordinates and receive time so a re-delivery adds nothing."""
        stored_at = time.time()
        added = 0
        with self._connection("write") as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO feedback (source, job_id, report, received_at, stored_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source, received_at) DO NOTHING RETURNING id",
                [(r.where, r.value.job_id, r.value.report, r.value.received_at, stored_at) for r in batch],
                returning=True,
            )
            for _ in batch:
                added += len(cur.fetchall())
                cur.nextset()
        return added

    def purge(self, results_before: float | None, feedback_before: float | None) -> tuple[int, int]:
        """Delete what was stored before these times, in one transaction (any replica may run it)."""
        counts = []
        with self._connection("write") as conn:
            for table, before in (
                ("results", results_before),
                ("feedback", feedback_before),
                ("shadow_results", results_before),
            ):
                if before is None:
                    counts.append(0)
                    continue
                cursor = conn.execute(f"DELETE FROM {table} WHERE stored_at < %s", (before,))  # noqa: S608 - our table names
                counts.append(cursor.rowcount)
        return counts[0], counts[1]

    def feedback(self, limit: int) -> list[StoredFeedback]:
        """The newest `limit` reports, newest first."""
        with self._connection("read") as conn:
            rows = conn.execute(
                "SELECT id, job_id, report, received_at, stored_at FROM feedback ORDER BY id DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return [StoredFeedback(*row) for row in rows]

    def listen(self, on_stored: Callable[[list[StoredResult]], None]) -> ResultListener:
        """Start handing every result any replica stores from now on to `on_stored`, in seq order."""
        listener = ResultListener(self, on_stored)
        listener.start()
        return listener

    def close(self) -> None:
        """Close every pooled connection; idempotent."""
        if not self._closed:
            self._closed = True
            self._pool.close()


def _result(row: tuple[int, str, str, float]) -> StoredResult:
    seq, job_id, raw, stored_at = row
    return StoredResult(seq, job_id, PredictionEvent.model_validate_json(raw), stored_at)
