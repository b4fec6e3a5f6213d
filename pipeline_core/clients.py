"""Kafka client factories: every producer, consumer and admin client of the project is made here."""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections import defaultdict
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner import Partitioner

from pipeline_core.errors import BrokerUnavailableError
from pipeline_core.kafka_client import partition_names
from pipeline_core.kafka_python_client import KafkaPythonConsumer, KafkaPythonProducer, translate
from pipeline_core.retry import retry_call
from pipeline_core.settings import PipelineSettings

__all__ = [
    "RoundRobinPartitioner",
    "create_admin",
    "create_consumer",
    "create_consumer_client",
    "create_producer",
    "create_producer_client",
    "partition_names",
    "wait_for_admin",
]

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
    timeout = timeout_s if timeout_s is not None else settings.kafka_connect_timeout_s

    def connect() -> KafkaAdminClient:
        try:
            return create_admin(settings, role)
        except KafkaError as e:
            raise BrokerUnavailableError(
                f"Kafka at {settings.kafka_bootstrap_servers}: {type(e).__name__}"
            ) from e

    try:
        return retry_call(connect, f"{role}: connecting to Kafka", timeout_s=timeout)
    except BrokerUnavailableError as e:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {settings.kafka_bootstrap_servers} within {timeout:.0f} s "
            "(set KAFKA_BOOTSTRAP_SERVERS, or start the local broker with `make run`)"
        ) from e


def create_consumer_client(
    settings: PipelineSettings, role: str, group_id: str, **overrides: Any
) -> KafkaPythonConsumer:
    """A runtime consumer: reads only committed records, so that aborted transactions are never seen."""
    try:
        consumer = create_consumer(settings, role, group_id, isolation_level="read_committed", **overrides)
    except KafkaError as e:
        raise translate(e, f"{role}: creating a consumer") from e
    return KafkaPythonConsumer(consumer)


def create_producer_client(
    settings: PipelineSettings, role: str, transactional_id: str | None = None
) -> KafkaPythonProducer:
    """A runtime producer; with a transactional id, initialised (which fences an older one of that id)."""
    overrides: dict[str, Any] = {}
    if transactional_id is not None:
        overrides = {
            "transactional_id": transactional_id,
            "transaction_timeout_ms": settings.transaction_timeout_ms,
            "max_block_ms": 10_000,
        }
    try:
        producer = create_producer(settings, role, **overrides)
    except KafkaError as e:
        raise translate(e, f"{role}: creating a producer") from e
    if transactional_id is not None:
        try:
            producer.init_transactions()
        except KafkaError as e:
            producer.close(timeout=0)
            raise translate(e, f"{role}: initialising transactions as {transactional_id}") from e
    return KafkaPythonProducer(producer)
