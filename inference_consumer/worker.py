"""The inference worker: one member of the consumer group, owning its poll -> classify -> publish -> commit loop."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError

from inference_consumer import metrics
from inference_consumer.model import Classification, ImageClassifier
from inference_consumer.settings import ConsumerSettings
from pipeline_core.clients import create_consumer, create_producer, partition_names
from pipeline_core.errors import BrokerUnavailableError, DecodeError, ImageDecodeError, PublishError
from pipeline_core.events import (
    ImageEvent,
    PredictionEvent,
    ScoredLabelModel,
    Timings,
    decode_image,
    encode_prediction,
)
from pipeline_core.offsets import OffsetCommitter, first_offsets

logger = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "dead-letter-reason"
DEAD_LETTER_SOURCE_HEADER = "dead-letter-source"
_MAX_JOB_ID = 64
LAG_REFRESH_S = 1.0  # while idle, the lag gauge is refreshed at most this often


@dataclass
class WorkerStats:
    """Counts for the shutdown summary line."""

    batches: int = 0
    done: int = 0
    failed: int = 0
    dead_lettered: int = 0
    publish_retries: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one image record becomes: a prediction, a dead-letter copy, or both."""

    record: Any  # kafka-python ConsumerRecord
    prediction: PredictionEvent | None
    dead_letter_reason: str | None


class _RebalanceLog(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs partition moves and drops the lag and the uncommitted offsets of revoked partitions. A batch is
    finished before the next poll, so nothing is in hand on revoke; what was finished but not committed yet is
    re-delivered to the partition's next owner (see `OffsetCommitter`)."""

    def __init__(self, committer: OffsetCommitter) -> None:
        self._committer = committer

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            logger.info("partitions revoked: %s", partition_names(revoked))
        self._committer.forget(revoked)
        _forget_lag(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", partition_names(assigned) or "none")


def _forget_lag(partitions: set[TopicPartition]) -> None:
    """Remove the lag series of partitions this member no longer holds, so no stale value lingers."""
    for tp in partitions:
        metrics.CONSUMER_LAG.remove(str(tp.partition))


class InferenceWorker:
    """Polls image events, classifies each poll as one batch, publishes predictions, then commits.

    Offsets are committed only after every prediction of the batch is acknowledged by the broker
    (`acks=all`), so a crash at any point re-delivers the batch instead of losing it; the sink stores one
    record per job, which makes the re-delivery harmless.
    """

    def __init__(self, settings: ConsumerSettings, classifier: ImageClassifier) -> None:
        self.settings = settings
        self.classifier = classifier
        self.stats = WorkerStats()
        self._stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._committer: OffsetCommitter | None = None
        self._lag_updated = 0.0

    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand; safe to call from a signal handler, twice."""
        self._stopping.set()

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this member holds right now."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def run(self) -> None:
        """Join the group and process batches until `stop()`; then commit, leave the group and close."""
        s = self.settings
        self._producer = create_producer(s, "inference")
        self._consumer = create_consumer(
            s,
            "inference",
            s.consumer_group_inference,
            max_poll_records=s.batch_max_size,
            # Also the JoinGroup timeout: a member whose join got lost retries after this, not after 5 minutes.
            # A batch takes well under a second, so 30 s between polls is ample.
            max_poll_interval_ms=30_000,
            # Partitions dealt to members in turn (0, 2, 4 and 1, 3, 5 for two), where the default gives each a
            # block (0-2, 3-5). The API puts consecutive images on consecutive partitions, so together consecutive
            # images go to different members: an upload of four splits 2+2 instead of 3+1 two times in three.
            partition_assignment_strategy=[RoundRobinPartitionAssignor],
        )
        self._committer = OffsetCommitter(self._consumer, s.commit_interval_ms / 1000)
        self._await_topic_metadata(self._consumer)
        self._consumer.subscribe([s.topic_images], listener=_RebalanceLog(self._committer))
        logger.info(
            "joined group %s on %s; model %s %s on %s, batches of up to %d",
            s.consumer_group_inference,
            s.topic_images,
            self.classifier.model_name,
            self.classifier.model_version,
            self.classifier.runtime,
            s.batch_max_size,
        )
        try:
            while not self._stopping.is_set():
                self._poll_once(self._consumer, self._producer, self._committer)
        finally:
            self._close()

    def _await_topic_metadata(self, consumer: KafkaConsumer) -> None:
        # Join only once this member knows the topic's partitions: a group leader without them assigns itself
        # nothing, and kafka-python 3.0.12 was seen to leave such a member idle until the group evicted it.
        deadline = time.monotonic() + self.settings.kafka_connect_timeout_s
        while not consumer.partitions_for_topic(self.settings.topic_images):
            if time.monotonic() > deadline or self._stopping.is_set():
                raise BrokerUnavailableError(f"no metadata for topic {self.settings.topic_images}")
            self._stopping.wait(0.2)

    def _poll_once(
        self, consumer: KafkaConsumer, producer: KafkaProducer, committer: OffsetCommitter
    ) -> None:
        polled = consumer.poll(
            timeout_ms=self.settings.batch_max_wait_ms, max_records=self.settings.batch_max_size
        )
        records = [r for batch in polled.values() for r in batch]
        if not records:
            committer.maybe_commit()
            if time.monotonic() - self._lag_updated >= LAG_REFRESH_S:
                self._update_lag(consumer)
            return
        try:
            self._handle(records, producer)
        except PublishError as e:
            # Not committed: rewind so the same records come again once the broker takes writes.
            self.stats.publish_retries += 1
            logger.warning("batch of %d not published (%s); will retry it", len(records), e)
            for tp, offset in first_offsets(records).items():
                consumer.seek(tp, offset)
            self._stopping.wait(1.0)
            return
        committer.done(records)
        committer.maybe_commit()  # after the batch, so a commit's round trip never delays a prediction
        self._update_lag(consumer)

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        """Set `inference_consumer_lag` for each assigned partition: highwater minus position.

        Both are known locally once a fetch response came (the highwater travels in it), so this costs no
        broker round trip; a partition not fetched yet is skipped until it is.
        """
        self._lag_updated = time.monotonic()
        try:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                position = consumer.position(tp, timeout_ms=0) if highwater is not None else None
                if position is not None:
                    metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, highwater - position))
        except KafkaError as e:  # IllegalStateError if a partition moved meanwhile: the next update fixes it
            logger.debug("lag not updated: %s", e)

    def _handle(self, records: Sequence[Any], producer: KafkaProducer) -> None:
        dequeued_at = time.time()
        outcomes = classify_records(records, self.classifier, self.settings.top_k, dequeued_at)
        futures = []
        for outcome in outcomes:
            if outcome.prediction is not None:
                key, value, headers = encode_prediction(outcome.prediction)
                futures.append(
                    producer.send(self.settings.topic_predictions, key=key, value=value, headers=headers)
                )
            if outcome.dead_letter_reason is not None:
                futures.append(self._dead_letter(producer, outcome.record, outcome.dead_letter_reason))
        producer.flush(timeout=self.settings.kafka_connect_timeout_s)
        failures = [f for f in futures if not f.succeeded()]
        if failures:
            cause = failures[0].exception
            raise PublishError(
                f"{len(failures)} of {len(futures)} sends not acknowledged: {cause or 'timed out'!r}"
            ) from cause
        self._count(outcomes)

    def _dead_letter(self, producer: KafkaProducer, record: Any, reason: str) -> Any:
        logger.warning(
            "%s[%d]@%d to the dead-letter topic: %s", record.topic, record.partition, record.offset, reason
        )
        headers = [
            *(record.headers or []),
            (DEAD_LETTER_REASON_HEADER, reason.encode()),
            (DEAD_LETTER_SOURCE_HEADER, f"{record.topic}[{record.partition}]@{record.offset}".encode()),
        ]
        return producer.send(
            self.settings.topic_dead_letter, key=record.key, value=record.value, headers=headers
        )

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        self.stats.batches += 1
        metrics.BATCH_SIZE.observe(len(outcomes))
        for outcome in outcomes:
            if outcome.prediction is not None:
                status = outcome.prediction.status
                self.stats.done += status == "done"
                self.stats.failed += status == "failed"
                metrics.IMAGES_CLASSIFIED.labels(status).inc()
            if outcome.dead_letter_reason is not None:
                self.stats.dead_lettered += 1
                metrics.DEAD_LETTERED.labels("undecodable").inc()

    def _close(self) -> None:
        if self._consumer is not None:
            _forget_lag(self.assignment)
            # The batch in hand was finished before the loop ended; what a failed commit leaves is re-delivered.
            if self._committer is not None:
                self._committer.commit()
            self._consumer.close(autocommit=False)  # this leaves the group
        if self._producer is not None:
            self._producer.close(timeout=self.settings.shutdown_grace_s)
        st = self.stats
        logger.info(
            "stopped after %.0f s: %d batches, %d done, %d failed, %d dead-lettered, %d publish retries",
            time.monotonic() - st.started,
            st.batches,
            st.done,
            st.failed,
            st.dead_lettered,
            st.publish_retries,
        )


def classify_records(
    records: Sequence[Any], classifier: ImageClassifier, top_k: int, dequeued_at: float
) -> list[Outcome]:
    """Decode and classify one poll's records in one model call; every record gets an outcome."""
    outcomes: dict[int, Outcome] = {}
    events: list[tuple[int, ImageEvent]] = []
    for n, record in enumerate(records):
        try:
            events.append((n, decode_image(record.value, record.headers)))
        except DecodeError as e:
            outcomes[n] = _undecodable_record(record, e)
    batch = classifier.classify_batch([event.image for _, event in events], top_k=top_k)
    metrics.INFERENCE_SECONDS.observe(batch.preprocess_s + batch.inference_s)
    predicted_at = time.time()
    for (n, event), result in zip(events, batch.results, strict=True):
        timings = Timings(
            received_at=event.meta.received_at,
            dequeued_at=dequeued_at,
            predicted_at=predicted_at,
            preprocess_ms=batch.preprocess_s * 1000,
            inference_ms=batch.inference_s * 1000,
            batch_size=len(events),
        )
        outcomes[n] = _outcome(records[n], event, result, classifier, timings)
    return [outcomes[n] for n in range(len(records))]


def _outcome(
    record: Any,
    event: ImageEvent,
    result: Classification | ImageDecodeError,
    classifier: ImageClassifier,
    timings: Timings,
) -> Outcome:
    common = {
        "job_id": event.meta.job_id,
        "filename": event.meta.filename,
        "model_name": classifier.model_name,
        "model_version": classifier.model_version,
        "runtime": classifier.runtime,
        "timings": timings,
    }
    if isinstance(result, ImageDecodeError):
        reason = f"cannot decode image: {result}"
        return Outcome(record, PredictionEvent(status="failed", error=reason, **common), reason)
    top = tuple(
        ScoredLabelModel(label=s.label, wnid=s.wnid, index=s.index, score=s.score) for s in result.top
    )
    prediction = PredictionEvent(status="done", label=top[0].label, score=top[0].score, top=top, **common)
    return Outcome(record, prediction, None)


def _undecodable_record(record: Any, error: DecodeError) -> Outcome:
    """A record that is not an image event: a failed result if a job id can be read, dead-lettered always."""
    reason = f"not a readable image event: {error}"
    job_id = readable_job_id(record)
    prediction = PredictionEvent(job_id=job_id, status="failed", error=reason) if job_id else None
    return Outcome(record, prediction, reason)


def readable_job_id(record: Any) -> str | None:
    """The job id of a damaged record, from its metadata header or its key, if either is legible."""
    raw_meta = dict(record.headers or ()).get("meta")
    if raw_meta:
        try:
            job_id = json.loads(raw_meta).get("job_id")
        except (ValueError, AttributeError):
            job_id = None
        if isinstance(job_id, str) and 0 < len(job_id) <= _MAX_JOB_ID:
            return job_id
    try:
        key = record.key.decode("utf-8") if record.key else ""
    except UnicodeDecodeError:
        return None
    return key if 0 < len(key) <= _MAX_JOB_ID and key.isprintable() else None
