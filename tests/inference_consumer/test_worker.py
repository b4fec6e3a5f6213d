"""The inference worker against a real broker and the real model: batches, failures, the consumer group."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from inference_consumer.model import ImageClassifier
from inference_consumer.settings import ConsumerSettings
from inference_consumer.worker import InferenceWorker
from pipeline_core.clients import create_consumer, create_producer
from pipeline_core.events import ImageEvent, ImageMeta, PredictionEvent, decode_prediction, encode_image
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(180)


def consumer_settings(base: PipelineSettings, **overrides: object) -> ConsumerSettings:
    return ConsumerSettings(**(base.model_dump() | {"batch_max_size": 8} | overrides), _env_file=None)  # type: ignore[call-arg, arg-type]


@contextmanager
def running(worker: InferenceWorker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker stops within 30 s of stop()"


def publish_images(settings: PipelineSettings, images: dict[str, bytes]) -> None:
    producer = create_producer(settings, "tests")
    try:
        for job_id, data in images.items():
            key, value, headers = encode_image(
                ImageEvent(
                    ImageMeta(
                        job_id=job_id,
                        filename=f"{job_id}.jpg",
                        content_type="image/jpeg",
                        received_at=time.time(),
                    ),
                    data,
                )
            )
            producer.send(settings.topic_images, key=key, value=value, headers=headers)
        producer.flush(30)
    finally:
        producer.close()


def read_topic(settings: PipelineSettings, topic: str, count: int, timeout_s: float = 60) -> list:  # type: ignore[type-arg]
    # As a downstream reader reads: committed transactions only.
    consumer = create_consumer(settings, "tests", group_id=None, isolation_level="read_committed")
    consumer.subscribe([topic])
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records += batch
    finally:
        consumer.close()
    return records


def predictions(settings: PipelineSettings, count: int) -> dict[str, PredictionEvent]:
    records = read_topic(settings, settings.topic_predictions, count)
    events = [decode_prediction(r.value, r.headers) for r in records]
    return {e.job_id: e for e in events}


def test_photos_are_classified_and_published_with_timings(
    pipeline_settings: PipelineSettings,
    litert_classifier: ImageClassifier,
    photos: dict[str, bytes],
    expected_labels: dict[str, set[str]],
) -> None:
    settings = consumer_settings(pipeline_settings)
    jobs = {f"{name}-{n}": photos[name] for name in expected_labels for n in range(5)}
    publish_images(settings, jobs)
    worker = InferenceWorker(settings, litert_classifier)
    with running(worker):
        results = predictions(settings, len(jobs))
    assert set(results) == set(jobs)
    for job_id, event in results.items():
        assert event.status == "done"
        assert event.label in expected_labels[job_id.rsplit("-", 1)[0]], (job_id, event.label)
        assert len(event.top) == 5 and event.top[0].label == event.label
        assert event.model_name == "efficientnet-lite0" and event.runtime == "litert"
        assert event.timings is not None and event.timings.batch_size >= 1
        assert event.timings.received_at <= event.timings.dequeued_at <= event.timings.predicted_at
    assert worker.runtime.stats.records == len(jobs)


def test_a_poll_of_many_images_is_one_checkpoint_classified_in_model_calls_of_batch_max_size(
    pipeline_settings: PipelineSettings,
    litert_classifier: ImageClassifier,
    photos: dict[str, bytes],
    expected_labels: dict[str, set[str]],
) -> None:
    """POLL_MAX_IMAGES sets what one checkpoint (transaction) covers, BATCH_MAX_SIZE what one model call takes:
    the images queued before the worker starts come in polls of up to 12, each a few calls of up to 3."""
    settings = consumer_settings(
        pipeline_settings, batch_max_size=3, poll_max_images=12, processing_guarantee="exactly-once"
    )
    jobs = {f"{name}-{n}": photos[name] for name in expected_labels for n in range(8)}
    publish_images(settings, jobs)
    calls: list[int] = []
    classify_batch = litert_classifier.classify_batch

    def counted(images: list[bytes], top_k: int = 5) -> object:
        calls.append(len(images))
        return classify_batch(images, top_k)

    worker = InferenceWorker(settings, litert_classifier)
    litert_classifier.classify_batch = counted  # type: ignore[method-assign,assignment]
    try:
        with running(worker):
            results = predictions(settings, len(jobs))
    finally:
        del litert_classifier.classify_batch  # the shared fixture's own method again
    assert set(results) == set(jobs)
    assert all(e.label in expected_labels[j.rsplit("-", 1)[0]] for j, e in results.items())
    assert max(calls) <= 3 and sum(calls) == len(jobs), calls
    assert max(e.timings.batch_size for e in results.values() if e.timings) <= 3
    batches = worker.runtime.stats.batches
    assert batches < len(calls), f"{batches} checkpoints for {len(calls)} model calls: polls held several"


def test_undecodable_image_gives_a_failed_result_and_a_dead_letter_and_the_partition_moves_on(
    pipeline_settings: PipelineSettings, litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    settings = consumer_settings(pipeline_settings, topic_partitions=6)
    publish_images(settings, {"broken": b"\xff\xd8\xff\xe0 not really a jpeg", "fine": photos["coffee"]})
    producer = create_producer(settings, "tests")
    # A foreign record with no schema and no legible id, and one with a legible key but garbage headers.
    producer.send(settings.topic_images, key=None, value=b"hello")
    producer.send(settings.topic_images, key=b"foreign-1", value=b"x", headers=[("schema", b"image/1")])
    producer.flush(30)
    producer.close()
    worker = InferenceWorker(settings, litert_classifier)
    with running(worker):
        results = predictions(settings, 3)
        dead = read_topic(settings, settings.topic_dead_letter, 3)
    assert results["fine"].status == "done" and results["fine"].label == "espresso"
    assert results["broken"].status == "failed" and "cannot decode image" in (results["broken"].error or "")
    unreadable = f"not a readable {settings.topic_images} record"
    assert results["foreign-1"].status == "failed" and unreadable in (results["foreign-1"].error or "")
    reasons = sorted(dict(r.headers)["dead-letter-reason"].decode().split(":")[0] for r in dead)
    assert reasons == ["cannot decode image", unreadable, unreadable]
    assert {r.value for r in dead} == {b"\xff\xd8\xff\xe0 not really a jpeg", b"hello", b"x"}


def test_two_workers_split_the_partitions_and_classify_each_image_once(
    pipeline_settings: PipelineSettings, litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    settings = consumer_settings(pipeline_settings, batch_max_size=4)
    jobs = {f"job-{n}": photos["coffee"] for n in range(60)}
    workers = [InferenceWorker(settings, litert_classifier) for _ in range(2)]
    with running(workers[0]), running(workers[1]):
        deadline = time.monotonic() + 60
        while not all(w.assignment for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assignments = [{tp.partition for tp in w.assignment} for w in workers]
        publish_images(settings, jobs)
        records = read_topic(settings, settings.topic_predictions, len(jobs))
        time.sleep(1)  # anything published twice would arrive by now
        records = read_topic(settings, settings.topic_predictions, len(jobs) + 1, timeout_s=3)
    assert assignments[0] and assignments[1] and assignments[0].isdisjoint(assignments[1])
    assert assignments[0] | assignments[1] == set(range(6))
    job_ids = [decode_prediction(r.value, r.headers).job_id for r in records]
    assert sorted(job_ids) == sorted(jobs), "every image classified exactly once"
    assert workers[0].runtime.stats.records > 0 and workers[1].runtime.stats.records > 0


def _group_lag(settings: PipelineSettings) -> int:
    from pipeline_core.clients import create_admin_client
    from pipeline_core.lag import group_lag

    admin = create_admin_client(settings, "tests")
    try:
        return sum(group_lag(admin, settings.consumer_group_inference, settings.topic_images).values())
    finally:
        admin.close()


def test_finished_batches_are_committed_once_the_interval_passes_even_while_idle(
    pipeline_settings: PipelineSettings, litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    settings = consumer_settings(
        pipeline_settings,
        commit_interval_ms=1000,
        batch_max_wait_ms=100,
        processing_guarantee="at-least-once",  # exactly-once commits offsets in each batch's transaction
    )
    worker = InferenceWorker(settings, litert_classifier)
    with running(worker):
        publish_images(settings, {f"job-{n}": photos["coffee"] for n in range(6)})
        predictions(settings, 6)
        deadline = time.monotonic() + 20
        while _group_lag(settings) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _group_lag(settings) == 0, "idle polls commit what was finished"


def test_stop_commits_what_was_finished_within_the_interval(
    pipeline_settings: PipelineSettings, litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    settings = consumer_settings(
        pipeline_settings, commit_interval_ms=60_000, processing_guarantee="at-least-once"
    )
    worker = InferenceWorker(settings, litert_classifier)
    with running(worker):
        publish_images(settings, {f"job-{n}": photos["coffee"] for n in range(6)})
        predictions(settings, 6)
        assert _group_lag(settings) == 6, "finished, but the interval has not passed: nothing committed yet"
    assert _group_lag(settings) == 0
    assert worker.runtime.stats.records == 6


def test_with_exactly_once_each_batch_commits_its_offsets_in_its_transaction(
    pipeline_settings: PipelineSettings, litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    settings = consumer_settings(pipeline_settings, commit_interval_ms=60_000)
    assert settings.processing_guarantee == "exactly-once"
    worker = InferenceWorker(settings, litert_classifier)
    with running(worker):
        publish_images(settings, {f"job-{n}": photos["coffee"] for n in range(6)})
        predictions(settings, 6)
        assert _group_lag(settings) == 0, "offsets committed with the predictions, not spaced out"
