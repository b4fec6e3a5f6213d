"""Kafka client factories: every producer, consumer and admin client of the project is made here."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import defaultdict
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner import Partitioner

from pipeline_core.errors import BrokerUnavailableError
from pipeline_core.settings import PipelineSettings

logger = logging.getLogger(__name__)


def _common(settings: PipelineSettings, role: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": f"{settings.kafka_client_id_prefix}-{role}-{socket.gethostname()}-{os.getpid()}",
        "security_protocol": settings.kafka_security_protocol,
        # kafka-python backs off up to 30 s between reconnects by default; a broker that comes back should be
        # used again within a second.
        "reconnect_backoff_max_ms": 1000,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        assert settings.kafka_sasl_password is not None  # guaranteed by the settings validator
        config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return config


def create_producer(settings: PipelineSettings, role: str, **overrides: Any) -> KafkaProducer:
    """A producer that only counts a send as done once every in-sync replica has it (`acks=all`)."""
    config = _common(settings, role) | {
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": settings.max_record_bytes,
        "linger_ms": 2,
        "retries": 5,
        "request_timeout_ms": 10_000,
        "delivery_timeout_ms": 30_000,
    }
    return KafkaProducer(**(config | overrides))


class RoundRobinPartitioner(Partitioner):  # type: ignore[misc]
    """Each record of a topic goes to the next partition in turn, whatever its key.

    The default partitioner hashes the key; our keys are random job ids, so the four images of one upload land
    on one consumer's partitions one time in eight (with two consumers) and wait for each other while the
    other consumer idles. Turn by turn, consecutive images spread over the group, which shortens the slowest
    image of an upload. Nothing relies on a job's partition: every image is its own job.
    """

    def __init__(self) -> None:
        self._turns: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)

    def partition(  # noqa: PLR0917 (kafka-python calls it with these six positional arguments)
        self, topic: str, key: Any, serialized_key: Any, value: Any, serialized_value: Any, cluster: Any
    ) -> int:
        partitions = sorted(
            cluster.available_partitions_for_topic(topic) or cluster.partitions_for_topic(topic)
        )
        return int(partitions[next(self._turns[topic]) % len(partitions)])  # next() on a count is atomic


def create_consumer(
    settings: PipelineSettings, role: str, group_id: str | None, **overrides: Any
) -> KafkaConsumer:
    """A consumer that commits only when told to, and can fetch the largest image record."""
    config = _common(settings, role) | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": settings.max_record_bytes,
        "fetch_max_bytes": max(52_428_800, settings.max_record_bytes),
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
    }
    return KafkaConsumer(**(config | overrides))


def create_admin(settings: PipelineSettings, role: str, **overrides: Any) -> KafkaAdminClient:
    """An admin client for topic administration and lag queries."""
    return KafkaAdminClient(**(_common(settings, role) | {"request_timeout_ms": 10_000} | overrides))


def wait_for_admin(settings: PipelineSettings, role: str, timeout_s: float | None = None) -> KafkaAdminClient:
    """An admin client, once the broker answers; retries with logged attempts, then gives up."""
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else settings.kafka_connect_timeout_s)
    attempt = 0
    while True:
        attempt += 1
        try:
            return create_admin(settings, role)
        except KafkaError as e:
            if time.monotonic() >= deadline:
                raise BrokerUnavailableError(
                    f"no Kafka broker answered at {settings.kafka_bootstrap_servers} after {attempt} attempts "
                    "(set KAFKA_BOOTSTRAP_SERVERS, or start the local broker with `make run`)"
                ) from e
            logger.info(
                "Kafka at %s not reachable yet (attempt %d: %s); retrying",
                settings.kafka_bootstrap_servers,
                attempt,
                type(e).__name__,
            )
            time.sleep(min(2.0, 0.25 * attempt))


def partition_names(partitions: set[TopicPartition]) -> str:
    """`topic[partition]` for each partition, sorted, for log lines about assignments."""
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))
