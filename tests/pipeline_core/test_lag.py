"""Consumer-group lag against a real broker."""

from __future__ import annotations

import pytest

from pipeline_core.clients import create_admin_client, create_consumer, create_producer
from pipeline_core.lag import group_lag
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(120)


def test_lag_counts_what_the_group_has_not_committed(client_settings: PipelineSettings) -> None:
    topic, group = client_settings.topic_predictions, client_settings.consumer_group_sink
    producer = create_producer(client_settings, "tests")
    for n in range(30):
        producer.send(topic, key=str(n).encode(), value=b"x")
    producer.flush(30)
    producer.close()
    admin = create_admin_client(client_settings, "tests")  # the services' admin, on each client library
    try:
        before = group_lag(admin, group, topic)
        assert set(before) == set(range(6)) and sum(before.values()) == 30

        consumer = create_consumer(client_settings, "tests", group, max_poll_records=10)
        consumer.subscribe([topic])
        read = 0
        while read < 10:
            read += sum(len(b) for b in consumer.poll(timeout_ms=500, max_records=10 - read).values())
        consumer.commit()
        consumer.close()
        assert sum(group_lag(admin, group, topic).values()) == 20
    finally:
        admin.close()
