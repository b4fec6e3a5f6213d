"""What the sink needs from a results store, whatever keeps the data (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeline_core.errors import ConfigurationError, PipelineError
from pipeline_core.events import FeedbackEvent, PredictionEvent, Record


class StoreError(PipelineError):
    """The store could not read or write; the consumer retries the batch, so nothing is lost."""

    retriable = True


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A prediction as stored: `seq` orders results by store time and is the SSE event id."""

    seq: int
    job_id: str
    event: PredictionEvent
    stored_at: float


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    """A user's report as stored."""

    id: int
    job_id: str | None
    report: str
    received_at: float
    stored_at: float


class ResultStore(Protocol):
    """One record per job; `seq` grows in commit order, which SSE resumption (Last-Event-ID) relies on."""

    def write_batch(self, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        """Store the events in one transaction; return only the new ones (the first result of a job wins)."""
        ...

    def get(self, job_id: str) -> StoredResult | None:
        """The stored result of one job, if any."""
        ...

    def results_after(self, job_ids: Sequence[str], after_seq: int) -> list[StoredResult]:
        """Stored results of these jobs with `seq > after_seq`, in seq order."""
        ...

    def write_shadow_batch(self, events: Sequence[PredictionEvent]) -> list[StoredResult]:
        """Store a shadow model's results apart from the primary's (first per job wins); return the new ones."""
        ...

    def get_shadow(self, job_id: str) -> StoredResult | None:
        """The shadow model's stored result of one job, if any."""
        ...

    def shadows_of(self, job_ids: Sequence[str]) -> list[StoredResult]:
        """The shadow model's stored results of these jobs, in seq order."""
        ...

    def recent(self, limit: int, *, shadow: bool = False) -> list[StoredResult]:
        """The newest `limit` results (the shadow model's with `shadow`), newest first: the comparison's window."""
        ...

    def add_feedback(self, batch: Sequence[Record[FeedbackEvent]]) -> int:
        """Store reports in one transaction, once per Kafka record; return how many are new."""
        ...

    def feedback(self, limit: int) -> list[StoredFeedback]:
        """The newest `limit` reports, newest first."""
        ...

    def purge(self, results_before: float | None, feedback_before: float | None) -> tuple[int, int]:
        """Delete results and reports stored before these Unix times (None: keep); how many of each went."""
        ...

    def close(self) -> None:
        """Release every connection; idempotent."""
        ...


class TableReads:
    """The reads by job id that every store has, on the one query each store implements: `_of(table, job_ids,
    after_seq)`, the rows of `results` or `shadow_results` for those jobs with `seq > after_seq`, in seq order."""

    def _of(self, table: str, job_ids: Sequence[str], after_seq: int) -> list[StoredResult]:
        raise NotImplementedError

    def get(self, job_id: str) -> StoredResult | None:
        """The stored result of one job, if any."""
        found = self._of("results", [job_id], 0)
        return found[0] if found else None

    def get_shadow(self, job_id: str) -> StoredResult | None:
        """The shadow model's stored result of one job, if any."""
        found = self._of("shadow_results", [job_id], 0)
        return found[0] if found else None

    def results_after(self, job_ids: Sequence[str], after_seq: int) -> list[StoredResult]:
        """Stored results of these jobs with `seq > after_seq`, in seq order."""
        return self._of("results", job_ids, after_seq)

    def shadows_of(self, job_ids: Sequence[str]) -> list[StoredResult]:
        """The shadow model's stored results of these jobs, in seq order."""
        return self._of("shadow_results", job_ids, 0)


class ResultFeed(Protocol):
    """A running feed of stored results (see `SharedResultStore.listen`)."""

    def stop(self) -> None:
        """Stop feeding and release the feed's connection; idempotent."""
        ...


@runtime_checkable
class SharedResultStore(ResultStore, Protocol):
    """A store several sink replicas share: it tells each of them what any of them stored."""

    def listen(self, on_stored: Callable[[list[StoredResult]], None]) -> ResultFeed:
        """Hand every result stored from now on, by any replica, to `on_stored` once, in seq order."""
        ...


def open_store(url: str) -> ResultStore:
    """The store a `RESULTS_STORE_URL` names, opened and with its schema in place."""
    # Imported inside: the implementations import this module, and psycopg is an optional extra (`postgres`).
    if url.startswith("sqlite:///"):
        from results_sink.sqlite_store import SqliteResultStore

        return SqliteResultStore.open(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from results_sink.postgres_store import PostgresResultStore
        except ImportError as e:
            if e.name not in ("psycopg", "psycopg_pool"):
                raise
            raise ConfigurationError(
                f"RESULTS_STORE_URL is a PostgreSQL URL but {e.name} is not installed; install the "
                "`postgres` extra (psycopg[binary,pool])"
            ) from e
        return PostgresResultStore.open(url)
    raise ConfigurationError(f"RESULTS_STORE_URL: no store implementation for {url.split(':', 1)[0]!r} yet")
