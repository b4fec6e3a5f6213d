"""The real broker: topics, produce and consume, and a consumer group of two splitting the partitions."""

from __future__ import annotations

import time
import uuid

import pytest

from pipeline_core.clients import create_admin, create_admin_client, create_consumer, create_producer
from pipeline_core.errors import ConfigurationError
from pipeline_core.events import ImageEvent, ImageMeta, decode_image, encode_image
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import ensure_topics, pipeline_topics

pytestmark = pytest.mark.timeout(120)


def test_topics_are_created_idempotently_with_the_configured_partitions_and_limits(
    client_settings: PipelineSettings,
) -> None:
    fresh = uuid.uuid4().hex[:10]  # topics this test creates itself, with the client library under test
    s = client_settings.model_copy(
        update={"topic_images": f"images-{fresh}", "topic_dead_letter": f"dead-letter-{fresh}"}
    )
    admin = create_admin_client(s, "tests")
    try:
        ensure_topics(admin, pipeline_topics(s))  # creates the two new topics, with this client library
        ensure_topics(admin, pipeline_topics(s))  # second call: nothing to create, no error
        assert {s.topic_images, s.topic_dead_letter} <= admin.topic_names()
        assert admin.partition_counts([s.topic_images, s.topic_dead_letter]) == {
            s.topic_images: 6,
            s.topic_dead_letter: 1,
        }
        assert admin.topic_config([s.topic_images], "max.message.bytes") == {
            s.topic_images: str(s.max_record_bytes)
        }
        assert admin.broker_count() == 1
    finally:
        admin.close()


def test_the_images_and_dead_letter_topics_keep_records_as_long_as_the_settings_say(
    pipeline_settings: PipelineSettings,
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    s = pipeline_settings
    admin = create_admin(s, "tests")
    try:
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, t, {"retention.ms": None})
            for t in (s.topic_images, s.topic_dead_letter, s.topic_predictions)
        ]
        described = admin.describe_configs(resources, config_filter="all")["topic"]
    finally:
        admin.close()
    retention = {name: int(c["retention.ms"]["value"]) for name, c in described.items()}
    assert retention[s.topic_images] == s.topic_images_retention_ms == 24 * 3600 * 1000
    assert retention[s.topic_dead_letter] == s.topic_dead_letter_retention_ms
    assert retention[s.topic_predictions] == 7 * 24 * 3600 * 1000, "the broker's default: results stay a week"


def test_existing_topic_too_small_for_the_image_limit_is_refused(client_settings: PipelineSettings) -> None:
    bigger = client_settings.model_copy(update={"max_image_bytes": client_settings.max_image_bytes * 2})
    admin = create_admin_client(bigger, "tests")
    try:
        with pytest.raises(ConfigurationError, match=r"max\.message\.bytes"):
            ensure_topics(admin, pipeline_topics(bigger))
    finally:
        admin.close()


def test_an_image_as_large_as_the_limit_goes_through(pipeline_settings: PipelineSettings) -> None:
    image = bytes(range(256)) * (pipeline_settings.max_image_bytes // 256)
    producer = create_producer(pipeline_settings, "tests")
    key, value, headers = encode_image(
        ImageEvent(
            ImageMeta(job_id="big", filename="big.png", content_type="image/png", received_at=0), image
        )
    )
    producer.send(pipeline_settings.topic_images, key=key, value=value, headers=headers).get(timeout=30)
    producer.close()
    consumer = create_consumer(pipeline_settings, "tests", group_id=None)
    consumer.subscribe([pipeline_settings.topic_images])
    records = _poll_until(consumer, 1)
    consumer.close()
    assert decode_image(records[0].value, records[0].headers).image == image


def test_a_consumer_group_of_two_splits_the_partitions_and_reads_each_record_once(
    pipeline_settings: PipelineSettings,
) -> None:
    import threading

    group = pipeline_settings.consumer_group_inference
    members = [create_consumer(pipeline_settings, f"tests-{n}", group_id=group) for n in range(2)]
    for member in members:
        member.subscribe([pipeline_settings.topic_predictions])
    received: list[list[str]] = [[], []]
    deadline = time.monotonic() + 60
    sent = {f"job-{i}" for i in range(60)}
    joined, done = threading.Event(), threading.Event()

    def run(n: int) -> None:
        # Each member polls on its own thread, as real consumers do: polled in turns from one thread, a member
        # could miss the other's rebalance (CI saw a commit refused with RebalanceInProgressError).
        member = members[n]
        while time.monotonic() < deadline and not done.is_set():
            for batch in member.poll(timeout_ms=200).values():
                received[n] += [r.value.decode() for r in batch]
            if joined.is_set():
                member.commit()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(2)]
    for thread in threads:
        thread.start()
    # The records are sent once the group is settled: a member that joined after the other had read some would
    # make a rebalance that re-delivers what was not committed yet, which is not what this test is about.
    while time.monotonic() < deadline and not all(m.assignment() for m in members):
        time.sleep(0.1)
    assert all(m.assignment() for m in members), "both members joined"
    joined.set()
    producer = create_producer(pipeline_settings, "tests")
    for job in sent:
        producer.send(pipeline_settings.topic_predictions, key=job.encode(), value=job.encode())
    producer.flush(timeout=30)
    producer.close()
    while time.monotonic() < deadline and sum(map(len, received)) < len(sent):
        time.sleep(0.1)
    time.sleep(1)  # a duplicate, if any, has time to come
    done.set()
    for thread in threads:
        thread.join(10)
    assignments = [{tp.partition for tp in m.assignment()} for m in members]
    for member in members:
        member.close()

    assert assignments[0] and assignments[1], "each member holds some partitions"
    assert assignments[0].isdisjoint(assignments[1])
    assert assignments[0] | assignments[1] == set(range(6))
    assert sorted(received[0] + received[1]) == sorted(sent), "every record read exactly once by the group"


def _poll_until(consumer, count: int, timeout_s: float = 30):  # type: ignore[no-untyped-def]
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records += batch
    assert len(records) >= count, f"got {len(records)} of {count} records within {timeout_s} s"
    return records
