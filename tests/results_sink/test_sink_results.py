"""The sink against a real broker: results by id, duplicates, poison records, feedback, health."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from kafka import KafkaProducer
from prometheus_client import REGISTRY
from sink_helpers import SinkServer, prediction

from pipeline_core.events import FeedbackEvent, encode_feedback
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(60)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for_result(sink: SinkServer, client: httpx.Client, job_id: str) -> httpx.Response:
    sink.wait_until(lambda: client.get(f"/v1/results/{job_id}").status_code == 200)
    return client.get(f"/v1/results/{job_id}")


def test_done_result_is_served_with_model_and_timings(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    job = job_id()
    assert client.get(f"/v1/results/{job}").json() == {"id": job, "status": "pending"}

    publish(prediction(job))
    body = wait_for_result(sink, client, job).json()

    assert body["id"] == job
    assert body["status"] == "done"
    assert body["filename"] == "cat.jpg"
    assert (body["label"], body["score"], body["error"]) == ("tabby", 0.87, None)
    assert body["top"][0] == {"label": "tabby", "wnid": "n02123045", "index": 281, "score": 0.87}
    assert body["model"] == {"name": "efficientnet-lite0", "version": "1", "runtime": "litert"}
    assert set(body["timings"]) == {
        "received_at",
        "dequeued_at",
        "predicted_at",
        "preprocess_ms",
        "inference_ms",
        "batch_size",
        "stored_at",
    }
    assert body["timings"]["stored_at"] >= body["timings"]["predicted_at"]


def test_failed_result_pending_and_unknown_ids(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    failed, pending = job_id(), job_id()
    publish(prediction(failed, status="failed"))
    body = wait_for_result(sink, client, failed).json()
    assert (body["status"], body["error"], body["label"], body["top"]) == ("failed", "not an image", None, [])

    response = client.get(f"/v1/results/{pending}")
    assert (response.status_code, response.json()) == (202, {"id": pending, "status": "pending"})
    for nonsense in ("nope", "A" * 32, pending[:-2] + "xx"):
        response = client.get(f"/v1/results/{nonsense}")
        assert response.status_code == 404
        assert "unknown job id" in response.json()["error"]


def test_an_event_delivered_twice_is_stored_once(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    job = job_id()
    duplicates = metric("duplicate_results_total")
    written = metric("results_written_total", status="done")

    publish(prediction(job))
    publish(prediction(job, label="second copy"))  # a re-delivery, as after a crash before the commit
    sink.wait_until(lambda: metric("duplicate_results_total") - duplicates >= 1)

    assert client.get(f"/v1/results/{job}").json()["label"] == "tabby"
    assert len(sink.app.state.store.results_after([job], 0)) == 1
    assert metric("duplicate_results_total") - duplicates == 1
    assert metric("results_written_total", status="done") - written == 1


def test_a_malformed_record_is_skipped_and_later_records_still_arrive(
    sink: SinkServer,
    client: httpx.Client,
    producer: KafkaProducer,
    pipeline_settings: PipelineSettings,
    publish: Callable[..., None],
    job_id: Callable[[], str],
) -> None:
    skipped = metric("undecodable_records_total", kind="prediction")
    job = job_id()
    topic = pipeline_settings.topic_predictions
    # Same key as the good record, so both land on one partition and the bad one comes first.
    producer.send(topic, key=job.encode(), value=b"{not json", headers=[("schema", b"prediction/1")]).get(10)
    producer.send(topic, key=job.encode(), value=b"no schema header").get(10)
    publish(prediction(job))

    assert wait_for_result(sink, client, job).json()["status"] == "done"
    assert metric("undecodable_records_total", kind="prediction") - skipped == 2


def test_feedback_is_stored(
    sink: SinkServer, producer: KafkaProducer, pipeline_settings: PipelineSettings, job_id: Callable[[], str]
) -> None:
    job = job_id()
    key, value, headers = encode_feedback(FeedbackEvent(report="it is a dog", job_id=job, received_at=1.0))
    producer.send(pipeline_settings.topic_feedback, key=key, value=value, headers=headers).get(10)

    sink.wait_until(lambda: len(sink.app.state.store.feedback(10)) == 1)
    stored = sink.app.state.store.feedback(10)[0]
    assert (stored.report, stored.job_id) == ("it is a dog", job)


def test_health_and_readiness(sink: SinkServer, client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "reason": None}
    assert "results_written_total" in client.get("/metrics").text


def test_not_ready_once_the_consumer_stopped_while_health_and_results_still_answer(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    job = job_id()
    publish(prediction(job))
    wait_for_result(sink, client, job)

    sink.app.state.consumer.stop()
    sink.app.state.consumer.stop()  # idempotent

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "reason": "consumer thread is not running (stopped)"}
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/v1/results/{job}").status_code == 200


def test_stop_commits_what_was_stored_so_a_restart_re_reads_nothing(
    start_sink: Callable[..., SinkServer], publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    first = start_sink(commit_interval_ms=60_000)  # nothing is committed by time while the test runs
    jobs = [job_id() for _ in range(3)]
    publish(*(prediction(job) for job in jobs))
    with httpx.Client(base_url=first.url, timeout=30) as client:
        for job in jobs:
            wait_for_result(first, client, job)
    first.stop()  # commits the stored batch's offsets on the way out

    duplicates = metric("duplicate_results_total")
    second = start_sink(commit_interval_ms=60_000)  # same store, same group
    later = job_id()
    publish(prediction(later))
    with httpx.Client(base_url=second.url, timeout=30) as client:
        wait_for_result(second, client, later)
    assert metric("duplicate_results_total") == duplicates, "the earlier batch was not delivered again"
