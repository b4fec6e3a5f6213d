"""Cross-replica live delivery: LISTEN for what any sink replica stored, hand it to this replica's hub.

Every `write_batch` of the PostgreSQL store sends `NOTIFY results_sink, '<largest seq>'` in its own
transaction, so the notification arrives when the rows are committed. Each replica runs one listener thread on
its own connection; on a notification it reads the rows with `seq > last_seq` (the writers' advisory lock
makes them complete up to the notified seq) and hands them over in seq order, each exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from pipeline_core.retry import Backoff, should_log
from results_sink.store import StoredResult, StoreError

if TYPE_CHECKING:
    from results_sink.postgres_store import PostgresResultStore

logger = logging.getLogger(__name__)

CHANNEL = "results_sink"  # NOTIFY channel; the payload is the largest seq the notifying transaction stored
WAIT_S = 0.25  # how long one wait for notifications lasts: how quickly `stop()` is noticed
PAGE = 500  # results read (and handed over) at a time
RETRY_BACKOFF = Backoff(first_s=0.5, max_s=5.0)  # the project's one retry policy


def _notified_seq(payload: str) -> int | None:
    """The seq a notification announces; None when the payload is not one (then look anyway)."""
    return int(payload) if payload.isascii() and payload.isdigit() else None


class ResultListener:
    """A thread LISTENing on its own connection; hands every result stored after `start()` to `on_stored`.

    A lost connection is re-opened (with logged attempts, for as long as the sink runs); afterwards the
    listener reads everything stored meanwhile, so a live client gets its result late, never not at all.
    """

    def __init__(self, store: PostgresResultStore, on_stored: Callable[[list[StoredResult]], None]) -> None:
        self._store = store
        self._on_stored = on_stored
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink-listener", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None
        self.last_seq = 0  # the largest seq handed over (or stored before the listener started)

    def start(self) -> None:
        """LISTEN, note where the store is, then start the thread; StoreError when the database is away."""
        # LISTEN before reading the last seq: anything committed after that read is then notified.
        self._conn = self._connect()
        try:
            self.last_seq = self._store.last_seq()
        except StoreError:
            self._close_connection()
            raise
        self._thread.start()
        logger.info("listening on channel %s from seq %d", CHANNEL, self.last_seq)

    def stop(self) -> None:
        """Stop the thread and close its connection; idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10 * WAIT_S + 10)
            if self._thread.is_alive():
                logger.warning("listener thread still busy at shutdown; leaving it (it is a daemon)")
                return
        self._close_connection()

    @property
    def running(self) -> bool:
        """Whether the listener thread is alive."""
        return self._thread.is_alive()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._store.url, autocommit=True, application_name="results-sink-listener")
        except psycopg.Error as e:
            raise StoreError(f"listener cannot connect: {e}") from e
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as e:
            conn.close()
            raise StoreError(f"listener cannot LISTEN: {e}") from e
        return conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    logger.info("listener reconnected; reading what was stored meanwhile")
                    self._catch_up()
                    failures = 0
                self._wait(self._conn)
            except (psycopg.Error, StoreError) as e:
                failures += 1
                if should_log(failures):
                    logger.warning("listener: %s (attempt %d); retrying", e, failures)
                self._close_connection()
                self._stopping.wait(RETRY_BACKOFF.delay(failures))
            except Exception:
                # Not expected (a bug in a callback?): log it, and go on feeding the hub rather than stop.
                logger.exception("listener: unexpected error; going on")
                self._stopping.wait(RETRY_BACKOFF.max_s)
        logger.info("listener stopped at seq %d", self.last_seq)

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        """Wait up to WAIT_S for notifications; read the new results when one announces any."""
        look = False
        for notify in conn.notifies(timeout=WAIT_S, stop_after=1):
            seq = _notified_seq(notify.payload)
            look = look or seq is None or seq > self.last_seq
        if look:
            self._catch_up()

    def _catch_up(self) -> None:
        """Hand over every result with seq > last_seq, in seq order, a page at a time."""
        while not self._stopping.is_set():
            results = self._store.results_since(self.last_seq, PAGE)
            if not results:
                return
            self.last_seq = results[-1].seq
            self._on_stored(results)
            if len(results) < PAGE:
                return
