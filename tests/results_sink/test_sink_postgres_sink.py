"""The sink on PostgreSQL: the SQLite sink's HTTP and SSE tests, and two replicas sharing one database."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from kafka import KafkaProducer
from sink_helpers import SinkServer, prediction

# The same tests as on SQLite, run here against a sink whose store is this test's PostgreSQL database.
from test_sink_results import (
    test_a_malformed_record_is_skipped_and_later_records_still_arrive,  # noqa: F401
    test_an_event_delivered_twice_is_stored_once,  # noqa: F401
    test_done_result_is_served_with_model_and_timings,  # noqa: F401
    test_failed_result_pending_and_unknown_ids,  # noqa: F401
    test_feedback_is_stored,  # noqa: F401
    test_health_and_readiness,  # noqa: F401
)
from test_sink_sse import (
    test_a_disconnecting_client_is_removed_from_the_hub,  # noqa: F401
    test_events_stream_sends_stored_results_first_then_live_ones_then_ends,  # noqa: F401
    test_job_stream_of_a_stored_result_sends_it_at_once_and_nothing_after_its_id,  # noqa: F401
    test_job_stream_sends_the_result_once_it_is_stored_then_ends,  # noqa: F401
    test_last_event_id_resumes_with_exactly_the_missed_results,  # noqa: F401
    test_streams_end_with_a_shutdown_event_when_the_server_stops,  # noqa: F401
)

from pipeline_core.events import encode_prediction
from pipeline_core.settings import PipelineSettings
from results_sink.postgres_store import PostgresResultStore
from results_sink.settings import SinkSettings
from results_sink.store import StoredResult

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def sink_settings(
    sink_settings: Callable[..., SinkSettings], postgres_url: str
) -> Callable[..., SinkSettings]:
    """The conftest's sink settings, storing in this test's PostgreSQL database (every replica the same)."""
    return lambda **overrides: sink_settings(**({"results_store_url": postgres_url} | overrides))


def test_the_sink_runs_on_postgres(sink: SinkServer) -> None:
    assert isinstance(sink.app.state.store, PostgresResultStore)


def spy_on_hub(sink: SinkServer) -> Counter[str]:
    """Count the results handed to this replica's hub, per job."""
    hub = sink.app.state.hub
    published: Counter[str] = Counter()
    publish = hub.publish

    def counting(results: list[StoredResult]) -> None:
        published.update(r.job_id for r in results)
        publish(results)

    hub.publish = counting  # the hand-over looks `hub.publish` up at each call
    return published


def settled(a: SinkServer, b: SinkServer, settings: PipelineSettings) -> bool:
    """Both replicas hold predictions partitions, together all, none twice: the group has rebalanced."""
    topic = settings.topic_predictions
    pa, pb = ({tp for tp in s.app.state.consumer.partitions if tp.topic == topic} for s in (a, b))
    return bool(pa) and bool(pb) and not (pa & pb) and len(pa | pb) == settings.topic_partitions


def prediction_partition(sink: SinkServer, topic: str) -> int:
    """A partition of the predictions topic that this replica's consumer holds."""
    return min(tp.partition for tp in sink.app.state.consumer.partitions if tp.topic == topic)


def test_a_client_on_one_replica_gets_live_what_the_other_replica_stored(
    start_sink: Callable[..., SinkServer],
    producer: KafkaProducer,
    pipeline_settings: PipelineSettings,
    job_id: Callable[[], str],
) -> None:
    a, b = start_sink(), start_sink()  # one database, one consumer group
    a.wait_until(lambda: settled(a, b, pipeline_settings), timeout_s=60)
    published = {a: spy_on_hub(a), b: spy_on_hub(b)}
    topic = pipeline_settings.topic_predictions

    for writer, reader in ((a, b), (b, a)):
        job = job_id()
        partition = prediction_partition(writer, topic)
        stored_before = writer.app.state.consumer.handler.stored
        with (
            httpx.Client(base_url=reader.url, timeout=30) as client,
            connect_sse(client, "GET", f"/v1/results/{job}/events") as source,
        ):
            reader.wait_until(lambda r=reader: r.subscribers == 1)  # waiting before the result exists
            key, value, headers = encode_prediction(prediction(job))
            producer.send(topic, key=key, value=value, headers=headers, partition=partition).get(10)
            events = list(source.iter_sse())

        stored = reader.app.state.store.get(job)
        assert stored is not None
        assert [(e.event, e.id, e.json()["id"]) for e in events] == [("result", str(stored.seq), job)]
        assert writer.app.state.consumer.handler.stored == stored_before + 1  # the other replica wrote it
        # Each replica's hub got the result once: from its listener, not also from its own consumer.
        a.wait_until(lambda j=job: published[a][j] >= 1 and published[b][j] >= 1)
        time.sleep(0.3)
        assert (published[a][job], published[b][job]) == (1, 1)


def test_last_event_id_resumes_on_either_replica_across_both_replicas_writes(
    start_sink: Callable[..., SinkServer],
    producer: KafkaProducer,
    pipeline_settings: PipelineSettings,
    job_id: Callable[[], str],
) -> None:
    a, b = start_sink(), start_sink()
    a.wait_until(lambda: settled(a, b, pipeline_settings), timeout_s=60)
    jobs = [job_id() for _ in range(4)]
    for n, job in enumerate(jobs):  # alternately written by a and b
        key, value, headers = encode_prediction(prediction(job))
        partition = prediction_partition((a, b)[n % 2], pipeline_settings.topic_predictions)
        producer.send(
            pipeline_settings.topic_predictions, key=key, value=value, headers=headers, partition=partition
        ).get(10)
        a.wait_until(lambda j=job: a.app.state.store.get(j) is not None)
    seqs = [a.app.state.store.get(j).seq for j in jobs]
    assert seqs == sorted(seqs)

    for replica in (a, b):  # a client that saw the first result on one replica resumes on either
        url = f"/v1/events?ids={','.join(jobs)}"
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            with connect_sse(client, "GET", url, headers={"Last-Event-ID": str(seqs[0])}) as source:
                events: list[Any] = list(source.iter_sse())
            assert [e.id for e in events] == [str(s) for s in seqs[1:]]
            assert client.get(url, headers={"Last-Event-ID": str(seqs[-1])}).status_code == 204
