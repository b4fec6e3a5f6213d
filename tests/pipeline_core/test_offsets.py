"""Spaced-out offset commits and the round-robin partitioner, against the real broker."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline_core.clients import (
    RoundRobinPartitioner,
    create_admin_client,
    create_consumer,
    create_producer,
)
from pipeline_core.kafka_client import first_offsets, next_offsets
from pipeline_core.kafka_python_client import KafkaPythonConsumer
from pipeline_core.offsets import OffsetCommitter
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import ensure_topics, pipeline_topics

pytestmark = pytest.mark.timeout(180)


def _produce(settings: PipelineSettings, count: int, **producer_config: Any) -> list[int]:
    """`count` records with random-looking keys; the partition each went to."""
    producer = create_producer(settings, "tests", **producer_config)
    futures = [
        producer.send(settings.topic_predictions, key=f"job-{n:03d}-x9".encode(), value=b"v")
        for n in range(count)
    ]
    producer.flush(timeout=30)
    producer.close()
    return [f.get(timeout=1).partition for f in futures]


def _poll_all(consumer: KafkaConsumer, count: int = 12) -> list[Any]:
    """Poll until the test's `count` records have come (failing after 60 s), as the runtime sees them."""
    client = KafkaPythonConsumer(consumer)
    records: list[Any] = []
    deadline = time.monotonic() + 60
    while len(records) < count and time.monotonic() < deadline:
        records += client.poll(0.5, 500)
    assert len(records) == count
    return records


def _joined_consumer(settings: PipelineSettings) -> tuple[KafkaConsumer, list[Any]]:
    """A group member that has polled all 12 records of the test."""
    consumer = create_consumer(settings, "tests", settings.consumer_group_sink)
    consumer.subscribe([settings.topic_predictions])
    return consumer, _poll_all(consumer)


def _committed(consumer: KafkaConsumer, settings: PipelineSettings) -> dict[int, int | None]:
    return {p: consumer.committed(TopicPartition(settings.topic_predictions, p)) for p in range(6)}


def test_round_robin_partitioner_spreads_consecutive_records_over_every_partition(
    pipeline_settings: PipelineSettings,
) -> None:
    partitions = _produce(pipeline_settings, 12, partitioner=RoundRobinPartitioner())
    assert Counter(partitions) == {p: 2 for p in range(6)}
    # Any 6 consecutive records cover all 6 partitions, so one upload's images spread over the group.
    assert all(len(set(partitions[i : i + 6])) == 6 for i in range(len(partitions) - 5))


def test_committer_waits_for_the_interval_then_commits_everything_done(
    pipeline_settings: PipelineSettings,
) -> None:
    _produce(pipeline_settings, 12, partitioner=RoundRobinPartitioner())
    consumer, records = _joined_consumer(pipeline_settings)
    try:
        committer = OffsetCommitter(KafkaPythonConsumer(consumer), interval_s=1.0)
        committer.commit()  # nothing pending: no request, resets the clock
        committer.done(records[:6])
        committer.maybe_commit()
        assert set(_committed(consumer, pipeline_settings).values()) == {None}, "not before the interval"
        committer.done(records[6:])
        time.sleep(1.1)
        committer.maybe_commit()
        assert committer.pending == {}
        assert _committed(consumer, pipeline_settings) == {p: 2 for p in range(6)}
    finally:
        consumer.close(autocommit=False)


def test_committer_with_no_interval_commits_each_batch_and_forgets_revoked_partitions(
    pipeline_settings: PipelineSettings,
) -> None:
    _produce(pipeline_settings, 12, partitioner=RoundRobinPartitioner())
    consumer, records = _joined_consumer(pipeline_settings)
    try:
        at_once = OffsetCommitter(KafkaPythonConsumer(consumer), interval_s=0)
        first_partition = [r for r in records if r.partition == 0]
        at_once.done(first_partition)
        assert _committed(consumer, pipeline_settings)[0] == 2
        spaced = OffsetCommitter(KafkaPythonConsumer(consumer), interval_s=60)
        spaced.done(records)
        spaced.forget({TopicPartition(pipeline_settings.topic_predictions, 1)})
        assert TopicPartition(pipeline_settings.topic_predictions, 1) not in spaced.pending
        spaced.commit()
        committed = _committed(consumer, pipeline_settings)
        assert committed[1] is None, "a forgotten partition is left for its next owner to re-read"
        assert all(committed[p] == 2 for p in (0, 2, 3, 4, 5))
    finally:
        consumer.close(autocommit=False)


def test_batch_offsets_are_where_to_rewind_and_what_to_commit(pipeline_settings: PipelineSettings) -> None:
    _produce(pipeline_settings, 12, partitioner=RoundRobinPartitioner())
    consumer, records = _joined_consumer(pipeline_settings)
    consumer.close(autocommit=False)
    topic = pipeline_settings.topic_predictions
    assert first_offsets(records) == {TopicPartition(topic, p): 0 for p in range(6)}
    assert next_offsets(records) == {TopicPartition(topic, p): 2 for p in range(6)}


def test_commit_while_the_broker_is_away_keeps_the_offsets_and_succeeds_once_it_is_back(
    local_broker_factory: Callable[[], Any], pipeline_settings: PipelineSettings
) -> None:
    broker = local_broker_factory()
    broker.start()
    try:
        settings = pipeline_settings.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap_servers})
        admin = create_admin_client(settings, "tests")
        ensure_topics(admin, pipeline_topics(settings))
        admin.close()
        _produce(settings, 12, partitioner=RoundRobinPartitioner())
        consumer = create_consumer(settings, "tests", settings.consumer_group_sink)
        topic = settings.topic_predictions
        consumer.assign([TopicPartition(topic, p) for p in range(6)])  # no group membership to lose
        consumer.seek_to_beginning()
        committer = OffsetCommitter(KafkaPythonConsumer(consumer), interval_s=60)
        committer.done(_poll_all(consumer))

        broker.kill()
        assert committer.commit() is False, "no broker: the commit fails, and does not raise"
        assert committer.pending == {TopicPartition(topic, p): 2 for p in range(6)}, "kept for later"

        broker.start()
        assert committer.commit() is True
        assert committer.pending == {}
        assert _committed(consumer, settings) == {p: 2 for p in range(6)}
        consumer.close(autocommit=False)
    finally:
        broker.stop()
