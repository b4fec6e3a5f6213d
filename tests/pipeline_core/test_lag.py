"""Consumer-group lag against a real broker."""

from __future__ import annotations

import pytest

from pipeline_core.clients import create_admin, create_consumer, create_producer
from pipeline_core.lag import group_lag
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(120)


def test_lag_counts_what_the_group_has_not_committed(pipeline_settings: PipelineSettings) -> None:
    topic, group = pipeline_settings.topic_predictions, pipeline_settings.consumer_group_sink
    producer = create_producer(pipeline_settings, "tests")
    for n in range(30):
        producer.send(topic, key=str(n).encode(), value=b"x")
    producer.flush(30)
    producer.close()
    admin = create_admin(pipeline_settings, "tests")
    try:
        before = group_lag(admin, group, topic)
        assert set(before) == set(range(6)) and sum(before.values()) == 30

        consumer = create_consumer(pipeline_settings, "tests", group, max_poll_records=10)
        consumer.subscribe([topic])
        read = 0
        while read < 10:
            read += sum(len(b) for b in consumer.poll(timeout_ms=500, max_records=10 - read).values())
        consumer.commit()
        consumer.close()
        assert sum(group_lag(admin, group, topic).values()) == 20
    finally:
        admin.close()
