"""Exactly-once against the real broker: what the runtime's transactions rely on, fencing above all.

A consumer that lost its partitions (a zombie: it stalled past the poll interval and the group moved on) must not
be able to commit its outputs and offsets, and a producer replaced by a newer one of the same transactional id
must not either; a `read_committed` reader never sees what they tried to write.
"""

from __future__ import annotations

import time

import pytest
from support import predictions_on_topic

from pipeline_core.clients import create_consumer_client, create_producer, create_producer_client
from pipeline_core.confluent_client import _membership
from pipeline_core.errors import FencedError, PipelineError, TransactionError
from pipeline_core.kafka_client import OutRecord, TopicPartition, next_offsets
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(120)


class Listener:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.assigned = set(partitions)

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.assigned -= partitions


def produce_inputs(settings: PipelineSettings, count: int) -> None:
    producer = create_producer(settings, "tests")
    for n in range(count):
        producer.send(settings.topic_images, key=f"in-{n}".encode(), value=b"x")
    producer.flush(30)
    producer.close()


def poll_some(consumer, timeout_s: float = 30) -> list:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = consumer.poll(0.5, 100)
        if records:
            return records
    raise AssertionError("nothing polled")


def output(settings: PipelineSettings, job: str) -> OutRecord:
    from pipeline_core.events import PredictionEvent, encode_prediction

    key, value, headers = encode_prediction(PredictionEvent(job_id=job, status="failed", error="test"))
    return OutRecord(settings.topic_predictions, key, value, tuple(headers))


def flush_and_commit(producer, records, metadata: object) -> None:  # type: ignore[no-untyped-def]
    producer.flush(10)
    producer.commit_transaction(next_offsets(records), metadata, 10)


def test_a_zombie_member_cannot_commit_its_transaction(client_settings: PipelineSettings) -> None:
    s = client_settings
    produce_inputs(s, 12)
    group = s.consumer_group_inference
    zombie = create_consumer_client(s, "tests", group, max_poll_interval_ms=3_000, session_timeout_ms=6_000)
    zombie.subscribe([s.topic_images], Listener())
    records = poll_some(zombie)
    metadata = zombie.group_metadata()  # the generation the zombie holds its partitions in
    if (
        s.kafka_client == "confluent-kafka"
    ):  # what the wrapper reads of librdkafka's metadata, on a real member
        generation, member = _membership(metadata)  # type: ignore[misc]
        assert generation >= 1 and member, (generation, member)
    zombie_producer = create_producer_client(s, "tests", "tests-zombie-" + group)

    # The zombie stalls past its poll interval; a new member takes every partition.
    successor = create_consumer_client(s, "tests", group)
    listener = Listener()
    successor.subscribe([s.topic_images], listener)
    deadline = time.monotonic() + 60
    while len(listener.assigned) < s.topic_partitions and time.monotonic() < deadline:
        successor.poll(0.5, 100)
    assert len(listener.assigned) == s.topic_partitions, "the successor holds every partition"

    zombie_producer.begin_transaction()
    zombie_producer.send(output(s, "from-the-zombie"))
    zombie_producer.flush(10)
    with pytest.raises(PipelineError):  # the group coordinator refuses the generation it polled under
        zombie_producer.commit_transaction(next_offsets(records), metadata, 10)
    # Evicted, the member's own membership changes (kafka-python resets it to no generation, librdkafka clears
    # the member id); a coordinator may not fence a commit made under either, so each client refuses it itself
    # (the runtime passes the membership it polled under, never this one).
    deadline = time.monotonic() + 30
    while str(zombie.group_metadata()) == str(metadata) and time.monotonic() < deadline:
        zombie.poll(0.2, 1) if s.kafka_client == "confluent-kafka" else time.sleep(0.2)
    evicted = zombie.group_metadata()
    assert str(evicted) != str(metadata), "the zombie learnt it was evicted"
    retry = create_producer_client(s, "tests", "tests-zombie-" + group)
    retry.begin_transaction()
    retry.send(output(s, "from-the-zombie"))
    retry.flush(10)
    with pytest.raises(TransactionError, match="not a group member"):
        retry.commit_transaction(next_offsets(records), evicted, 10)
    retry.close(1)
    assert "from-the-zombie" not in predictions_on_topic(s, set(), timeout_s=5, settle_s=1)
    for client in (zombie_producer,):
        client.close(1)
    successor.close()
    zombie.close()


def test_a_producer_replaced_by_a_newer_one_of_its_transactional_id_is_fenced(
    client_settings: PipelineSettings,
) -> None:
    s = client_settings
    produce_inputs(s, 4)
    consumer = create_consumer_client(s, "tests", s.consumer_group_inference)
    consumer.subscribe([s.topic_images], Listener())
    records = poll_some(consumer)
    old = create_producer_client(s, "tests", "tests-fenced-" + s.consumer_group_inference)
    old.begin_transaction()
    old.send(output(s, "from-the-old-producer"))
    new = create_producer_client(s, "tests", "tests-fenced-" + s.consumer_group_inference)  # fences `old`
    with pytest.raises(FencedError, match="CONSUMER_INSTANCE_ID"):
        flush_and_commit(old, records, consumer.group_metadata())
    new.begin_transaction()
    new.send(output(s, "from-the-new-producer"))
    flush_and_commit(new, records, consumer.group_metadata())
    seen = predictions_on_topic(s, {"from-the-new-producer"}, timeout_s=20, settle_s=1)
    assert seen == {"from-the-new-producer": 1}, "only the newer producer's transaction is visible"
    for producer in (old, new):
        producer.close(1)
    consumer.close()
