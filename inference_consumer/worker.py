"""The inference consumer: what a batch of image records becomes (one model call, one prediction per image),
run on the shared consumer runtime (`pipeline_core.runtime`), which owns the loop, retries and checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, set_span_in_context

from inference_consumer import metrics
from inference_consumer.model import Classification, ImageClassifier
from inference_consumer.settings import ConsumerSettings
from pipeline_core import tracing
from pipeline_core.clients import create_consumer_client, create_producer_client
from pipeline_core.errors import DecodeError, ImageDecodeError
from pipeline_core.events import (
    ImageEvent,
    PredictionEvent,
    RawRecord,
    Record,
    ScoredLabelModel,
    Timings,
    decode_image,
    encode_prediction,
    header,
)
from pipeline_core.kafka_client import ConsumerClient, OutRecord, TopicPartition
from pipeline_core.runtime import ConsumerRuntime, Failed, runtime_config

logger = logging.getLogger(__name__)

_MAX_JOB_ID = 64
LAG_REFRESH_S = 1.0  # while idle, the lag gauge is refreshed at most this often


def decode_image_record(record: RawRecord) -> ImageEvent:
    """The images topic's decoder."""
    return decode_image(record.value, record.headers)


class InferenceHandler:
    """Classifies a batch of image events in one model call; an image that cannot be decoded fails alone."""

    def __init__(self, settings: ConsumerSettings, classifier: ImageClassifier) -> None:
        self.settings = settings
        self.classifier = classifier

    def handle(self, batch: Sequence[Record[ImageEvent]]) -> list[OutRecord | Failed]:
        """One prediction record per image (`Failed` for an image that cannot be decoded), in model calls of
        up to BATCH_MAX_SIZE images."""
        size = self.settings.batch_max_size
        return [
            output
            for start in range(0, len(batch), size)
            for output in self._call(batch[start : start + size])
        ]

    def _call(self, batch: Sequence[Record[ImageEvent]]) -> list[OutRecord | Failed]:
        dequeued_at = time.time()
        result = self.classifier.classify_batch([r.value.image for r in batch], top_k=self.settings.top_k)
        predicted_at = time.time()
        metrics.INFERENCE_SECONDS.observe(result.preprocess_s + result.inference_s)
        metrics.BATCH_SIZE.observe(len(batch))
        timings = {
            "dequeued_at": dequeued_at,
            "predicted_at": predicted_at,
            "preprocess_ms": result.preprocess_s * 1000,
            "inference_ms": result.inference_s * 1000,
            "batch_size": len(batch),
        }
        outputs: list[OutRecord | Failed] = []
        for record, classification in zip(batch, result.results, strict=True):
            if isinstance(classification, ImageDecodeError):
                outputs.append(Failed(record, f"cannot decode image: {classification}"))
                continue
            event = record.value
            trace_out = self._trace(record, dequeued_at, predicted_at, result.preprocess_s, len(batch))
            prediction = self._done(
                event, classification, Timings(received_at=event.meta.received_at, **timings), trace_out
            )
            outputs.append(prediction_record(self.settings, prediction, record, trace_out))
            metrics.IMAGES_CLASSIFIED.labels("done").inc()
        return outputs

    def _trace(
        self,
        record: Record[ImageEvent],
        dequeued_at: float,
        predicted_at: float,
        preprocess_s: float,
        size: int,
    ) -> TraceOut:
        """This image's spans, in the trace its record's headers carry: the wait in the topic, its share of the
        batch (the one model call's two stages, at their times), and the hand-off of its prediction; returns
        what carries the trace on to the prediction record."""
        parent = tracing.context_from_headers(record.headers)
        if not tracing.is_traced(parent):
            return NOT_TRACED
        where: dict[str, str | int | float] = {
            "job.id": record.value.meta.job_id,
            "messaging.kafka.offset": record.offset,
        }
        tracing.record_span(
            "queue wait", record.value.meta.received_at, dequeued_at, parent, attributes=where
        )
        classify = tracing.record_span(
            "classify",
            dequeued_at,
            predicted_at,
            parent,
            attributes=where | {"model.name": self.classifier.model_name, "batch.size": size},
            kind=SpanKind.CONSUMER,
        )
        stages = set_span_in_context(classify)
        tracing.record_span("preprocess", dequeued_at, dequeued_at + preprocess_s, stages)
        tracing.record_span("inference", dequeued_at + preprocess_s, predicted_at, stages)
        return self._publish_trace(parent, predicted_at, record.value.meta.job_id)

    def _publish_trace(self, parent: Context, started_at: float, job_id: str) -> TraceOut:
        """A producer span for the prediction (from the result to its hand-off to the producer, which sends it
        with the batch's commit), whose context the prediction record carries."""
        if not tracing.is_traced(parent):
            return NOT_TRACED
        topic = self.settings.predictions_topic
        publish = tracing.record_span(
            f"publish {topic}",
            started_at,
            time.time(),
            parent,
            attributes={"messaging.destination.name": topic, "job.id": job_id},
            kind=SpanKind.PRODUCER,
        )
        context = set_span_in_context(publish)
        return TraceOut(tuple(tracing.trace_headers(context)), tracing.traceparent_of(publish))

    def on_poison(self, record: RawRecord, reason: str) -> list[OutRecord]:
        """A failed result for the record's job, when a job id can be read from it."""
        metrics.DEAD_LETTERED.labels("unprocessable").inc()
        job_id: str | None
        try:
            meta = decode_image(record.value, record.headers).meta
            job_id, filename = meta.job_id, meta.filename
        except DecodeError:
            job_id, filename = readable_job_id(record), ""
        if job_id is None:
            return []
        metrics.IMAGES_CLASSIFIED.labels("failed").inc()
        # The failed result continues the image's trace too, when its record carries one.
        trace_out = self._publish_trace(tracing.context_from_headers(record.headers), time.time(), job_id)
        failed = PredictionEvent(
            job_id=job_id,
            status="failed",
            filename=filename,
            error=reason,
            traceparent=trace_out.traceparent,
            **self._model(),
        )
        return [prediction_record(self.settings, failed, record, trace_out)]

    def _done(
        self, event: ImageEvent, result: Classification, timings: Timings, trace_out: TraceOut
    ) -> PredictionEvent:
        top = tuple(
            ScoredLabelModel(label=s.label, wnid=s.wnid, index=s.index, score=s.score) for s in result.top
        )
        return PredictionEvent(
            job_id=event.meta.job_id,
            status="done",
            filename=event.meta.filename,
            label=top[0].label,
            score=top[0].score,
            top=top,
            timings=timings,
            traceparent=trace_out.traceparent,
            **self._model(),
        )

    def _model(self) -> dict[str, str]:
        c = self.classifier
        return {"model_name": c.model_name, "model_version": c.model_version, "runtime": c.runtime}


class TraceOut(NamedTuple):
    """What carries an image's trace on to its prediction: the record's headers, and the same context for the
    prediction's `traceparent` field (none of either when nothing is traced)."""

    headers: tuple[tuple[str, bytes], ...] = ()
    traceparent: str | None = None


NOT_TRACED = TraceOut()


def prediction_record(
    settings: ConsumerSettings,
    prediction: PredictionEvent,
    source: Record[Any],
    trace_out: TraceOut = NOT_TRACED,
) -> OutRecord:
    """A prediction as an output record of the predictions topic."""
    key, value, headers = encode_prediction(prediction)
    return OutRecord(settings.predictions_topic, key, value, (*headers, *trace_out.headers), source)


def readable_job_id(record: RawRecord) -> str | None:
    """The job id of a damaged record, from its metadata header or its key, if either is legible."""
    raw_meta = header(record.headers, "meta")
    if raw_meta and len(raw_meta) <= 4096:
        try:
            job_id = json.loads(raw_meta).get("job_id")
        except (ValueError, AttributeError):
            job_id = None
        if isinstance(job_id, str) and 0 < len(job_id) <= _MAX_JOB_ID and job_id.isprintable():
            return job_id
    try:
        key = record.key.decode("utf-8") if record.key else ""
    except UnicodeDecodeError:
        return None
    return key if 0 < len(key) <= _MAX_JOB_ID and key.isprintable() else None


class _LagGauge:
    """Keeps `inference_consumer_lag` per assigned partition: after each batch, and every second while idle."""

    def __init__(self) -> None:
        self._updated = 0.0

    def on_assignment(self, _assigned: set[TopicPartition], revoked: set[TopicPartition]) -> None:
        for tp in revoked:  # no stale value lingers for a partition this member no longer holds
            with contextlib.suppress(KeyError):  # no series yet for a partition not fetched
                metrics.CONSUMER_LAG.remove(str(tp.partition))

    def after_turn(self, consumer: ConsumerClient, had_records: bool) -> None:
        if not had_records and time.monotonic() - self._updated < LAG_REFRESH_S:
            return
        self._updated = time.monotonic()
        for tp, lag in consumer.lag().items():
            metrics.CONSUMER_LAG.labels(str(tp.partition)).set(lag)


class InferenceWorker:
    """One member of the inference group: the handler on the consumer runtime, with this service's clients."""

    def __init__(self, settings: ConsumerSettings, classifier: ImageClassifier) -> None:
        self.settings = settings
        self.classifier = classifier
        s = settings
        group = s.group_id
        config = runtime_config(
            s,
            role="inference" if s.inference_role == "primary" else "shadow inference",
            group_id=group,
            decoders={s.topic_images: decode_image_record},
            exactly_once=s.processing_guarantee == "exactly-once",
            dead_letter_topic=s.dead_letter_topic,
            max_records=max(s.batch_max_size, s.poll_max_images),
            poll_timeout_s=s.batch_max_wait_ms / 1000,
            shutdown_grace_s=s.shutdown_grace_s,
        )
        lag = _LagGauge()
        self.runtime = ConsumerRuntime(
            config,
            InferenceHandler(settings, classifier),
            lambda: create_consumer_client(
                s,
                "inference",
                group,
                # Also the JoinGroup timeout: a member whose join got lost retries after this, not after 5
                # minutes. A batch takes well under a second, so 30 s between polls is ample.
                max_poll_interval_ms=30_000,
                # Partitions dealt to members in turn (0, 2, 4 and 1, 3, 5 for two), where the default gives each
                # a block (0-2, 3-5). The API puts consecutive images on consecutive partitions, so consecutive
                # images go to different members: an upload of four splits 2+2 instead of 3+1 two times in three.
                round_robin=True,
            ),
            lambda tid: create_producer_client(s, "inference", tid),
            on_assignment=lag.on_assignment,
            after_turn=lag.after_turn,
        )

    def run(self) -> None:
        """Join the group and classify until `stop()`; raises what the runtime cannot survive."""
        c = self.classifier
        logger.info(
            "%s model %s %s on %s, model calls of up to %d images, polls and checkpoints of up to %d, "
            "group %s -> %s",
            self.settings.inference_role,
            c.model_name,
            c.model_version,
            c.runtime,
            self.settings.batch_max_size,
            max(self.settings.batch_max_size, self.settings.poll_max_images),
            self.settings.group_id,
            self.settings.predictions_topic,
        )
        self.runtime.run()

    def stop(self) -> None:
        """Stop after the batch in hand; safe from a signal handler, twice."""
        self.runtime.stop()

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this member holds right now."""
        return set(self.runtime.assignment)
