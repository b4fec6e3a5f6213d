"""The sink's Kafka side: what a batch of predictions and feedback becomes (rows in the store, events for the
live streams), run on the shared consumer runtime on a thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from pipeline_core import tracing
from pipeline_core.clients import create_consumer_client, create_producer_client, wait_for_admin
from pipeline_core.events import (
    FeedbackEvent,
    PredictionEvent,
    RawRecord,
    Record,
    decode_feedback,
    decode_prediction,
)
from pipeline_core.kafka_client import OutRecord
from pipeline_core.runtime import ConsumerRuntime, describe, runtime_config
from pipeline_core.topics import ensure_topics, pipeline_topics
from results_sink import metrics
from results_sink.comparison import ModelMetrics
from results_sink.settings import SinkSettings
from results_sink.store import ResultStore, StoredResult

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5  # how quickly the loop notices a stop request when no records come
MAX_POLL_RECORDS = 500

OnStored = Callable[[list[StoredResult]], None]


class SinkHandler:
    """Stores each batch (results in one transaction, then feedback) and hands new results to the streams.

    The store keeps the first result of each job, so a prediction delivered twice is stored once; the
    duplicate is counted (`sink_duplicate_results_total`) and logged with its coordinates.
    """

    def __init__(self, settings: SinkSettings, store: ResultStore, on_stored: OnStored) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self.stored = 0
        self.duplicates = 0
        self.models = ModelMetrics()
        # Pairs are looked up only once a shadow model has answered: without one, no query is added per batch.
        self._shadow_seen = bool(store.recent(1, shadow=True))

    def handle(self, batch: Sequence[Record[Any]]) -> list[OutRecord]:
        """Store the batch; nothing goes back to Kafka."""
        shadow_topic = self.settings.topic_predictions_shadow
        predictions = [r for r in batch if isinstance(r.value, PredictionEvent) and r.topic != shadow_topic]
        shadows = [r for r in batch if isinstance(r.value, PredictionEvent) and r.topic == shadow_topic]
        feedback = [r for r in batch if isinstance(r.value, FeedbackEvent)]
        if predictions:
            self._store(predictions)
        if shadows:
            self._store_shadows(shadows)
        if feedback:
            metrics.FEEDBACK_WRITTEN.inc(self.store.add_feedback(feedback))
        return []

    def on_poison(self, record: RawRecord, reason: str) -> list[OutRecord]:
        """Count it; the runtime copies it to the dead-letter topic. No failed result is stored: a prediction the
        sink cannot read (a newer schema during a rolling upgrade, a foreign writer) must not end its job
        before the readable result, and can be replayed from the dead-letter topic."""
        kind = "feedback" if record.topic == self.settings.topic_feedback else "prediction"
        metrics.UNDECODABLE_RECORDS.labels(kind).inc()
        return []

    def _store(self, records: list[Record[PredictionEvent]]) -> None:
        started = time.perf_counter()
        with _store_spans(records) as events:
            new = self.store.write_batch(events)
        metrics.STORE_WRITE_SECONDS.observe(time.perf_counter() - started)
        self.stored += len(new)
        new_ids = {r.job_id for r in new}
        for record in records:
            event = record.value
            if event.job_id in new_ids:
                new_ids.discard(event.job_id)
                metrics.RESULTS_WRITTEN.labels(event.status).inc()
            else:
                self.duplicates += 1
                metrics.DUPLICATE_RESULTS.inc()
                logger.info("job %s from %s is stored already; duplicate ignored", event.job_id, record.where)
        for stored in new:
            if stored.event.timings is not None:
                metrics.RESULT_AGE_SECONDS.observe(stored.stored_at - stored.event.timings.received_at)
        self.models.stored("primary", new)
        if new and self._shadow_seen:
            by_job = _by_job(new)
            for shadow in self.store.shadows_of(list(by_job)):
                self.models.paired(by_job[shadow.job_id].event, shadow.event)
        if new:
            self.on_stored(new)

    def _store_shadows(self, records: list[Record[PredictionEvent]]) -> None:
        """A shadow model's results: stored beside the primary's and compared, never streamed. Counted, and a
        pair is counted here when the primary's half is in already (else when it comes, in `_store`)."""
        with _store_spans(records) as events:
            new = self.store.write_shadow_batch(events)
        self._shadow_seen = True
        self.models.stored("shadow", new)
        if new:
            by_job = _by_job(new)
            for primary in self.store.results_after(list(by_job), 0):
                self.models.paired(primary.event, by_job[primary.job_id].event)


@contextmanager
def _store_spans(records: list[Record[PredictionEvent]]) -> Iterator[list[PredictionEvent]]:
    """A span per prediction around the batch's write, in its image's trace (from the record's headers, or the
    prediction's own `traceparent`); the events to store carry their span's context, so that the SSE event
    that delivers one later is a span of the same trace."""
    spans = []
    events = []
    for record in records:
        parent = tracing.context_from_headers(record.headers)
        if not trace.get_current_span(parent).get_span_context().is_valid:
            parent = tracing.context_of(record.value.traceparent)
        if not tracing.is_traced(parent):
            events.append(record.value)
            continue
        span = tracing.tracer().start_span(
            f"store {record.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"job.id": record.value.job_id, "messaging.kafka.offset": record.offset},
        )
        spans.append(span)
        traceparent = tracing.traceparent_of(span) or record.value.traceparent
        events.append(record.value.model_copy(update={"traceparent": traceparent}))
    try:
        yield events
    except Exception as e:
        for span in spans:
            span.record_exception(e)
            span.set_status(trace.StatusCode.ERROR, type(e).__name__)
        raise
    finally:
        for span in spans:
            span.end()


def _by_job(results: list[StoredResult]) -> dict[str, StoredResult]:
    return {r.job_id: r for r in results}


def _decoders(settings: SinkSettings) -> dict[str, Callable[[RawRecord], object]]:
    return {
        settings.topic_predictions: lambda r: decode_prediction(r.value, r.headers),
        settings.topic_predictions_shadow: lambda r: decode_prediction(r.value, r.headers),
        settings.topic_feedback: lambda r: decode_feedback(r.value, r.headers),
    }


class SinkConsumer:
    """The runtime on its own thread, with readiness for `/readyz` and a callback when its loop dies.

    The sink consumes at-least-once whatever PROCESSING_GUARANTEE says: it writes nothing back to Kafka but
    dead letters, and the store keeps one result per job, so a re-delivered batch changes nothing. It reads
    `read_committed`, so it never stores a prediction of an aborted transaction.
    """

    def __init__(
        self,
        settings: SinkSettings,
        store: ResultStore,
        on_stored: OnStored,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.handler = SinkHandler(settings, store, on_stored)
        self._on_fatal = on_fatal
        s = settings
        config = runtime_config(
            s,
            role="sink",
            group_id=s.consumer_group_sink,
            decoders=_decoders(s),
            exactly_once=False,
            max_records=MAX_POLL_RECORDS,
            poll_timeout_s=POLL_TIMEOUT_S,
            shutdown_grace_s=s.shutdown_grace_s,
        )
        self.runtime = ConsumerRuntime(
            config,
            self.handler,
            lambda: create_consumer_client(s, "sink", s.consumer_group_sink),
            lambda _tid: create_producer_client(s, "sink"),
        )
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="sink-consumer", daemon=True)

    def start(self) -> None:
        """Start the consumer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, let the batch in hand finish within the grace period, leave the group; idempotent."""
        self.runtime.stop()
        if self._thread.is_alive():
            self._thread.join(self.settings.shutdown_grace_s)
            if self._thread.is_alive():
                logger.warning(
                    "consumer thread still busy after %.0f s (%s); anything uncommitted will be re-delivered",
                    self.settings.shutdown_grace_s,
                    self.runtime.state,
                )

    @property
    def running(self) -> bool:
        """Whether the consumer thread is still alive."""
        return self._thread.is_alive()

    @property
    def partitions(self) -> frozenset[Any]:
        """The partitions this member holds now (empty during a rebalance)."""
        return self.runtime.assignment

    def not_ready_reason(self) -> str | None:
        """None when the consumer is working, else why not (for `/readyz` and `/healthz`)."""
        if self.failure is not None:
            return f"consumer loop died: {self.failure}"
        if not self._thread.is_alive():
            return f"consumer thread is not running ({self.runtime.state})"
        return self.runtime.not_ready_reason()

    def _run(self) -> None:
        try:
            self._ensure_topics()
            self.runtime.run()
        except InterruptedError:
            return
        except Exception as e:
            # Never a live process doing nothing: /healthz says so, and the process is told to exit non-zero.
            self.failure = describe(e)
            logger.critical("results consumer died: %s", self.failure, exc_info=True)
            if self._on_fatal is not None:
                self._on_fatal()

    def _ensure_topics(self) -> None:
        admin = wait_for_admin(self.settings, "sink")  # retries, bounded by KAFKA_CONNECT_TIMEOUT_S
        try:
            ensure_topics(admin, pipeline_topics(self.settings))
        finally:
            admin.close()
