"""The SQLite results store: WAL mode, one write connection behind a lock, a pool of read connections."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline_core.events import FeedbackEvent, PredictionEvent, Record
from results_sink.store import StoredFeedback, StoredResult, StoreError, TableReads

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    json TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    json TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    job_id TEXT,
    report TEXT NOT NULL,
    received_at REAL NOT NULL,
    stored_at REAL NOT NULL,
    UNIQUE (source, received_at)
);
"""
# SQLite caps bound parameters per statement (32766 since 3.32); stay well below it.
_MAX_PARAMS = 900


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never opened behind our back.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    # FULL: a transaction is on disk when COMMIT returns, before the consumer commits its Kafka offsets.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class SqliteResultStore(TableReads):
    """A `ResultStore` in one SQLite file; safe to share between the consumer thread and request threads."""

    def __init__(self, path: str, writer: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._write_lock = threading.Lock()
        self._idle_readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: str) -> SqliteResultStore:
        """Open (creating the file, its directory and the schema if needed) in WAL mode."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            writer = _connect(path)
            # WAL lets readers work while the consumer writes, instead of waiting on its lock.
            writer.execute("PRAGMA journal_mode = WAL")
            writer.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open results store {path}: {e}") from e
        logger.info("results store: SQLite %s at %s", sqlite3.sqlite_version, Path(path).resolve())
        return cls(path, writer)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                # Data it refuses will be refused every time (that record's alone); a locked, full or unwritable
                # database may recover.
                retriable = not isinstance(e, (sqlite3.DataError, sqlite3.IntegrityError))
                raise StoreError(f"results store write failed: {e}", retriable=retriable) from e

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        self._check_open()
        try:
            conn = self._idle_readers.get_nowait()
        except queue.Empty:
            conn = self._new_reader()
        try:
            yield conn
        except sqlite3.Error as e:
            raise StoreError(f"results store read failed: {e}") from e
        finally:
            self._idle_readers.put(conn)

    def _new_reader(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        with self._readers_lock:
            self._all_readers.append(conn)
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("results store is closed")

    def write_batch(self, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        """Insert each event unless its job is stored already; return the new ones, in seq order."""
        return self._write("results", events)

    def write_shadow_batch(self, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        """The same for a shadow model's results, in a table of their own."""
        return self._write("shadow_results", events)

    def recent(self, limit: int, *, shadow: bool = False) -> list[StoredResult]:
        """The newest `limit` results (the shadow model's with `shadow`), newest first."""
        table = "shadow_results" if shadow else "results"
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT seq, job_id, json, stored_at FROM {table} ORDER BY seq DESC LIMIT ?",  # noqa: S608 - our table names
                (limit,),
            ).fetchall()
        return [_result(row) for row in rows]

    def _write(self, table: str, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        stored_at = time.time()
        new: list[StoredResult] = []
        with self._transaction() as conn:
            for event in events:
                row = conn.execute(
                    f"INSERT INTO {table} (job_id, json, stored_at) VALUES (?, ?, ?) "  # noqa: S608 - our table names
                    "ON CONFLICT (job_id) DO NOTHING RETURNING seq",
                    (event.job_id, event.model_dump_json(), stored_at),
                ).fetchone()
                if row is not None:
                    new.append(StoredResult(row[0], event.job_id, event, stored_at))
        return new

    def _of(self, table: str, job_ids: Sequence[str], after_seq: int) -> list[StoredResult]:
        rows: list[tuple[int, str, str, float]] = []
        ids = list(dict.fromkeys(job_ids))
        with self._reading() as conn:
            for start in range(0, len(ids), _MAX_PARAMS):
                chunk = ids[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    f"SELECT seq, job_id, json, stored_at FROM {table} WHERE seq > ? AND job_id IN ({marks})",  # noqa: S608 - only our table name and placeholders are interpolated
                    (after_seq, *chunk),
                ).fetchall()
        return sorted((_result(row) for row in rows), key=lambda r: r.seq)

    def add_feedback(self, batch: Sequence[Record[FeedbackEvent]]) -> int:
        """Store reports, keyed by their Kafka coordinates and receive time so a re-delivery adds nothing."""
        stored_at = time.time()
        added = 0
        with self._transaction() as conn:
            for record in batch:
                event = record.value
                cursor = conn.execute(
                    "INSERT INTO feedback (source, job_id, report, received_at, stored_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, received_at) DO NOTHING",
                    (record.where, event.job_id, event.report, event.received_at, stored_at),
                )
                added += cursor.rowcount
        return added

    def purge(self, results_before: float | None, feedback_before: float | None) -> tuple[int, int]:
        """Delete what was stored before these times, in one transaction."""
        with self._transaction() as conn:
            results = _delete_before(conn, "results", results_before)
            _delete_before(conn, "shadow_results", results_before)
            feedback = _delete_before(conn, "feedback", feedback_before)
        return results, feedback

    def feedback(self, limit: int) -> list[StoredFeedback]:
        """The newest `limit` reports, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, job_id, report, received_at, stored_at FROM feedback ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [StoredFeedback(*row) for row in rows]

    def close(self) -> None:
        """Close the write connection and every read connection; idempotent."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        with self._readers_lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()


def _result(row: tuple[int, str, str, float]) -> StoredResult:
    seq, job_id, raw, stored_at = row
    return StoredResult(seq, job_id, PredictionEvent.model_validate_json(raw), stored_at)


def _delete_before(conn: sqlite3.Connection, table: str, before: float | None) -> int:
    if before is None:
        return 0
    cursor = conn.execute(f"DELETE FROM {table} WHERE stored_at < ?", (before,))  # noqa: S608 - our table names
    return cursor.rowcount
