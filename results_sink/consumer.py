"""The sink's Kafka side: a thread that polls predictions and feedback, stores each batch, then commits
its offsets (at most every COMMIT_INTERVAL_MS)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline_core.clients import create_consumer, partition_names, wait_for_admin
from pipeline_core.errors import BrokerUnavailableError, DecodeError
from pipeline_core.events import FeedbackEvent, PredictionEvent, Record, decode_feedback, decode_prediction
from pipeline_core.offsets import OffsetCommitter, first_offsets
from pipeline_core.topics import ensure_topics, pipeline_topics
from results_sink import metrics
from results_sink.settings import SinkSettings
from results_sink.store import ResultStore, StoredResult, StoreError

logger = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500  # how quickly the loop notices a stop request when no records come
MAX_POLL_RECORDS = 500
RECENT_POLL_S = 30.0  # readiness: a poll this recent counts even before partitions are assigned
RETRY_PAUSE_S = 1.0

OnStored = Callable[[list[StoredResult]], None]


@dataclass
class ConsumerStats:
    """Counts for the shutdown summary line."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    undecodable: int = 0
    feedback: int = 0
    store_retries: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """One poll's records that hold readable events, split by topic."""

    predictions: list[Record[PredictionEvent]]
    feedback: list[Record[FeedbackEvent]]
    undecodable: int


def _where(record: Any) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def decode_records(records: Sequence[Any], settings: SinkSettings) -> DecodedBatch:
    """Decode a poll's records; an unreadable one is logged with its coordinates, counted and skipped."""
    predictions: list[Record[PredictionEvent]] = []
    feedback: list[Record[FeedbackEvent]] = []
    skipped = 0
    for r in records:
        is_feedback = r.topic == settings.topic_feedback
        try:
            if is_feedback:
                event = decode_feedback(r.value, r.headers)
                feedback.append(Record(r.topic, r.partition, r.offset, r.key, event))
            else:
                prediction = decode_prediction(r.value, r.headers)
                predictions.append(Record(r.topic, r.partition, r.offset, r.key, prediction))
        except DecodeError as e:
            # Poison-message policy: skip it, so the partition never stalls; the log line says where it is.
            skipped += 1
            metrics.UNDECODABLE_RECORDS.labels("feedback" if is_feedback else "prediction").inc()
            logger.warning("skipping %s: %s", _where(r), e)
    return DecodedBatch(predictions, feedback, skipped)


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps the current assignment for `/readyz`. Each batch is stored before the next poll, so a revoke finds
    nothing in hand; stored but uncommitted records of a revoked partition are re-delivered to its next owner
    (see `OffsetCommitter`), and the store drops them as duplicates."""

    def __init__(self) -> None:
        self.partitions: frozenset[TopicPartition] = frozenset()
        self.committer: OffsetCommitter | None = None

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.partitions = frozenset()
        if self.committer is not None:
            self.committer.forget(revoked)
        if revoked:
            logger.info("partitions revoked: %s", partition_names(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.partitions = frozenset(assigned)
        logger.info("partitions assigned: %s", partition_names(assigned) or "none")


class SinkConsumer:
    """Owns a kafka-python consumer on its own thread: poll -> decode -> store (one transaction) -> commit
    -> `on_stored(new results)`.

    Offsets are committed only after the store committed the batch, so a crash re-delivers it; the store
    keeps one record per job, so the re-delivery is harmless.
    """

    def __init__(self, settings: SinkSettings, store: ResultStore, on_stored: OnStored) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self.stats = ConsumerStats()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink-consumer", daemon=True)
        self._assignment = _Assignment()
        self._last_poll: float | None = None
        self._state = "not started"

    def start(self) -> None:
        """Start the consumer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, let the batch in hand finish within the grace period, leave the group; idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(self.settings.shutdown_grace_s)
            if self._thread.is_alive():
                logger.warning(
                    "consumer thread still busy after %.0f s (%s); anything uncommitted will be re-delivered",
                    self.settings.shutdown_grace_s,
                    self._state,
                )

    @property
    def running(self) -> bool:
        """Whether the consumer thread is still alive."""
        return self._thread.is_alive()

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The partitions this member holds now (empty during a rebalance)."""
        return self._assignment.partitions

    def not_ready_reason(self) -> str | None:
        """None when the consumer is working, else why not (for `/readyz`)."""
        if not self._thread.is_alive():
            return f"consumer thread is not running ({self._state})"
        if self._assignment.partitions:
            return None
        if self._last_poll is not None and time.monotonic() - self._last_poll < RECENT_POLL_S:
            return None
        return f"consumer has no partitions yet ({self._state})"

    def _run(self) -> None:
        try:
            consumer = self._connect()
            if consumer is None:
                return
            committer = OffsetCommitter(consumer, self.settings.commit_interval_ms / 1000)
            self._assignment.committer = committer
            try:
                self._consume(consumer, committer)
            finally:
                # Every polled batch was stored before the loop ended; what a failed commit leaves is re-delivered.
                committer.commit()
                consumer.close(autocommit=False)  # this leaves the group at once
                self._log_summary()
        except Exception as e:
            # Surfaced through /readyz (503 with this reason) and the log; the HTTP side keeps serving.
            self._state = f"stopped by {type(e).__name__}: {e}"
            logger.exception("results consumer stopped by an unexpected error")
            return
        self._state = "stopped"

    def _connect(self) -> KafkaConsumer | None:
        """Make sure the topics exist and join the group, retrying while the broker is away."""
        s = self.settings
        while not self._stopping.is_set():
            self._state = f"connecting to Kafka at {s.kafka_bootstrap_servers}"
            try:
                admin = wait_for_admin(s, "sink")
                try:
                    ensure_topics(admin, pipeline_topics(s))
                finally:
                    admin.close()
                consumer = create_consumer(
                    s, "sink", s.consumer_group_sink, max_poll_records=MAX_POLL_RECORDS
                )
            except (BrokerUnavailableError, KafkaError) as e:
                logger.error("cannot reach Kafka (%s); trying again", e)
                self._stopping.wait(RETRY_PAUSE_S)
                continue
            consumer.subscribe([s.topic_predictions, s.topic_feedback], listener=self._assignment)
            self._state = "consuming"
            logger.info(
                "joined group %s on %s and %s", s.consumer_group_sink, s.topic_predictions, s.topic_feedback
            )
            return consumer
        return None

    def _consume(self, consumer: KafkaConsumer, committer: OffsetCommitter) -> None:
        while not self._stopping.is_set():
            try:
                self._poll_once(consumer, committer)
            except KafkaError as e:
                # kafka-python reconnects by itself; pause so a broker that is away is not hammered.
                logger.warning("Kafka error while consuming (%s: %s); retrying", type(e).__name__, e)
                self._stopping.wait(RETRY_PAUSE_S)

    def _poll_once(self, consumer: KafkaConsumer, committer: OffsetCommitter) -> None:
        polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
        self._last_poll = time.monotonic()
        records = [r for batch in polled.values() for r in batch]
        if not records:
            committer.maybe_commit()
            return
        batch = decode_records(records, self.settings)
        try:
            new = self._store(batch)
        except StoreError as e:
            # Not committed: rewind so the same records come again once the store takes writes.
            self.stats.store_retries += 1
            logger.warning("batch of %d records not stored (%s); will retry it", len(records), e)
            for tp, offset in first_offsets(records).items():
                consumer.seek(tp, offset)
            self._stopping.wait(RETRY_PAUSE_S)
            return
        committer.done(records)  # step 3: the offsets, now that the store has the batch
        if new:
            self.on_stored(new)
        committer.maybe_commit()  # after handing results to the streams, so a commit never delays them

    def _store(self, batch: DecodedBatch) -> list[StoredResult]:
        """Step 1: store the results (one transaction), Step 2: the feedback; count what was new."""
        started = time.perf_counter()
        new = self.store.write_batch([r.value for r in batch.predictions]) if batch.predictions else []
        metrics.STORE_WRITE_SECONDS.observe(time.perf_counter() - started)
        for stored in new:
            if stored.event.timings is not None:
                metrics.RESULT_AGE_SECONDS.observe(stored.stored_at - stored.event.timings.received_at)
        feedback = self.store.add_feedback(batch.feedback) if batch.feedback else 0
        self._count(batch, new, feedback)
        return new

    def _count(self, batch: DecodedBatch, new: list[StoredResult], feedback: int) -> None:
        new_ids = {r.job_id for r in new}
        for record in batch.predictions:
            event = record.value
            if event.job_id in new_ids:
                new_ids.discard(event.job_id)
                metrics.RESULTS_WRITTEN.labels(event.status).inc()
                logger.debug("stored %s result of job %s from %s", event.status, event.job_id, record.where)
            else:
                metrics.DUPLICATE_RESULTS.inc()
                self.stats.duplicates += 1
                logger.info("job %s from %s is stored already; duplicate ignored", event.job_id, record.where)
        metrics.FEEDBACK_WRITTEN.inc(feedback)
        self.stats.batches += 1
        self.stats.stored += len(new)
        self.stats.undecodable += batch.undecodable
        self.stats.feedback += feedback

    def _log_summary(self) -> None:
        st = self.stats
        logger.info(
            "consumer stopped after %.0f s: %d batches, %d results stored, %d duplicates, %d undecodable, "
            "%d feedback, %d store retries",
            time.monotonic() - st.started,
            st.batches,
            st.stored,
            st.duplicates,
            st.undecodable,
            st.feedback,
            st.store_retries,
        )
