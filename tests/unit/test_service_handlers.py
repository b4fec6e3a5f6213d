"""The two services' batch handlers on the consumer runtime with in-memory fake clients: no broker, no model.

The inference handler gets a stand-in classifier (the real one is tested in tests/inference_consumer), the sink
handler a real SQLite store in a temporary folder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fake_kafka import FakeBroker, FakeConsumer, FakeProducer

from inference_consumer.model.classifier import BatchResult, Classification, ScoredLabel
from inference_consumer.settings import ConsumerSettings
from inference_consumer.worker import InferenceHandler, decode_image_record
from pipeline_core.errors import ImageDecodeError
from pipeline_core.events import (
    ImageEvent,
    ImageMeta,
    PredictionEvent,
    decode_prediction,
    encode_image,
    encode_prediction,
)
from pipeline_core.jobs import new_job_id
from pipeline_core.runtime import ConsumerRuntime, runtime_config
from results_sink.consumer import SinkHandler, _decoders
from results_sink.settings import SinkSettings
from results_sink.sqlite_store import SqliteResultStore

SECRET = "unit-test-secret-of-enough-length"


class StandInClassifier:
    """Labels every image `espresso`; bytes starting with `bad` cannot be decoded."""

    model_name, model_version, runtime = "stand-in", "0", "none"

    def classify_batch(self, images: Sequence[bytes], top_k: int = 5) -> BatchResult:
        results: list[Classification | ImageDecodeError] = [
            ImageDecodeError("corrupt")
            if data.startswith(b"bad")
            else Classification((ScoredLabel("espresso", None, 967, 0.9),))
            for data in images
        ]
        return BatchResult(results, 0.001, 0.002)


def run(runtime: ConsumerRuntime, done, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)
    runtime.stop()
    thread.join(5)
    assert done()


def image_record(job_id: str, data: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    meta = ImageMeta(
        job_id=job_id, filename=f"{job_id}.jpg", content_type="image/jpeg", received_at=time.time()
    )
    return encode_image(ImageEvent(meta, data))


def test_inference_handler_classifies_fails_bad_images_alone_and_dead_letters_foreign_records() -> None:
    settings = ConsumerSettings(_env_file=None, processing_guarantee="exactly-once")  # type: ignore[call-arg]
    broker = FakeBroker(partitions=1)
    for job, data in (("a", b"jpeg"), ("b", b"bad bytes"), ("c", b"jpeg")):
        key, value, headers = image_record(job, data)
        broker.append(settings.topic_images, 0, key, value, headers)
    broker.append(settings.topic_images, 0, b"foreign", b"x", [("schema", None)])
    config = runtime_config(
        settings,
        role="inference",
        group_id="g",
        decoders={settings.topic_images: decode_image_record},
        exactly_once=True,
        poll_timeout_s=0.01,
    )
    handler = InferenceHandler(settings, StandInClassifier())  # type: ignore[arg-type]
    runtime = ConsumerRuntime(
        config, handler, lambda: FakeConsumer(broker, "g"), lambda t: FakeProducer(broker, t)
    )
    run(runtime, lambda: len(broker.read(settings.topic_predictions)) == 4)
    results = {
        e.job_id: e
        for e in (decode_prediction(r.value, r.headers) for r in broker.read(settings.topic_predictions))
    }
    assert results["a"].status == results["c"].status == "done" and results["a"].label == "espresso"
    assert results["b"].status == "failed" and results["b"].filename == "b.jpg"
    assert results["foreign"].status == "failed" and "not a readable" in (results["foreign"].error or "")
    assert results["a"].model_name == "stand-in"
    assert sorted(r.value for r in broker.read(settings.topic_dead_letter)) == [b"bad bytes", b"x"]


def test_sink_handler_stores_once_and_dead_letters_what_it_cannot_read_without_ending_the_job(
    tmp_path: Path,
) -> None:
    settings = SinkSettings(
        _env_file=None,  # type: ignore[call-arg]
        results_store_url=f"sqlite:///{tmp_path}/r.db",
        job_id_secret=SECRET,
    )
    store = SqliteResultStore.open(str(tmp_path / "r.db"))
    broker = FakeBroker(partitions=1)
    done = PredictionEvent(job_id="job-1", status="done", label="espresso", score=0.9)
    for _ in range(2):  # delivered twice: stored once
        broker.append(settings.topic_predictions, 0, *encode_prediction(done))
    issued = new_job_id(SECRET.encode())
    broker.append(settings.topic_predictions, 0, issued.encode(), b"{broken", [("schema", b"prediction/1")])
    newer = PredictionEvent(job_id=issued, status="done", label="espresso", score=0.9).model_dump_json()
    broker.append(
        settings.topic_predictions, 0, issued.encode(), newer.encode(), [("schema", b"prediction/3")]
    )
    broker.append(
        settings.topic_predictions, 0, *encode_prediction(done.model_copy(update={"job_id": issued}))
    )
    stored: list[object] = []
    config = runtime_config(
        settings,
        role="sink",
        group_id="s",
        decoders=_decoders(settings),
        exactly_once=False,
        poll_timeout_s=0.01,
    )
    handler = SinkHandler(settings, store, stored.extend)
    runtime = ConsumerRuntime(
        config, handler, lambda: FakeConsumer(broker, "s"), lambda t: FakeProducer(broker, t)
    )
    run(runtime, lambda: store.get(issued) is not None)
    assert store.get("job-1") is not None and handler.duplicates == 1
    later = store.get(issued)
    assert later is not None and later.event.status == "done", "unreadable results do not end the job first"
    assert len(stored) == 2
    assert [dict(r.headers)["dead-letter-source"] for r in broker.read(settings.topic_dead_letter)] == [
        f"{settings.topic_predictions}[0]@2".encode(),
        f"{settings.topic_predictions}[0]@3".encode(),
    ], "kept for replay, e.g. by a sink that reads prediction/3"
    store.close()
