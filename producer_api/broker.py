"""Connecting to Kafka: one blocking attempt, and a readiness probe; both run in worker threads."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from kafka.errors import KafkaError

from pipeline_core.clients import create_admin_client, create_shared_producer, diagnose_connection
from pipeline_core.errors import BrokerUnavailableError, KafkaAccessError
from pipeline_core.kafka_client import AdminClient, SharedProducer
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import ensure_topics, pipeline_topics

logger = logging.getLogger(__name__)

TCP_CHECK_TIMEOUT_S = 1.0
METADATA_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Connection:
    """The producer every request shares, and an admin client for probes."""

    producer: SharedProducer
    admin: AdminClient

    def close(self, timeout_s: float) -> None:
        """Deliver what is buffered (bounded; the rest is dropped and logged), then close both clients."""
        try:
            self.producer.close(timeout_s)
        finally:
            self.admin.close()


def any_port_open(bootstrap_servers: str) -> bool:
    """Whether a TCP connection to any bootstrap server succeeds: a cheap first check before kafka-python."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=TCP_CHECK_TIMEOUT_S):
                return True
        except OSError:
            continue
    return False


def connect(settings: PipelineSettings) -> Connection:
    """One attempt: producer, admin, topics ensured, metadata fetched; else `BrokerUnavailableError`."""
    # kafka-python leaks its sockets when a client's bootstrap fails, so only try once a port answers.
    if not any_port_open(settings.kafka_bootstrap_servers):
        raise BrokerUnavailableError(f"no broker listening at {settings.kafka_bootstrap_servers}")
    # The admin client first, and one metadata request: a refused certificate or password shows here, before
    # the producer (whose librdkafka would only report it later, from its own threads).
    admin: AdminClient | None = None
    try:
        admin = create_admin_client(settings, "api")
        admin.broker_count()
    except (BrokerUnavailableError, KafkaAccessError) as e:
        if admin is not None:
            admin.close()
        # A refused certificate or password reads, to kafka-python, as a broker that does not answer: say which
        # setting is wrong (in the log and in /readyz), and keep retrying, as for a broker that is down.
        reason = diagnose_connection(settings) or f"did not answer: {e}"
        raise BrokerUnavailableError(f"Kafka at {settings.kafka_bootstrap_servers}: {reason}") from e
    try:
        producer = create_shared_producer(settings, "api")
    except (KafkaError, BrokerUnavailableError) as e:
        admin.close()
        raise BrokerUnavailableError(f"Kafka producer connection failed: {e}") from e
    connection = Connection(producer, admin)
    try:
        ensure_topics(admin, pipeline_topics(settings))
        producer.prepare([settings.topic_images, settings.topic_feedback], METADATA_TIMEOUT_S)
    except (KafkaError, BrokerUnavailableError, KafkaAccessError) as e:
        connection.close(timeout_s=0)
        raise BrokerUnavailableError(f"Kafka topic set-up failed: {e}") from e
    except BaseException:
        connection.close(timeout_s=0)
        raise
    return connection


def probe(connection: Connection, bootstrap_servers: str) -> None:
    """Raise `BrokerUnavailableError` unless the cluster answers a metadata request."""
    if not any_port_open(bootstrap_servers):
        raise BrokerUnavailableError(f"no broker listening at {bootstrap_servers}")
    try:
        connection.admin.broker_count()
    except (BrokerUnavailableError, KafkaAccessError) as e:
        raise BrokerUnavailableError(f"Kafka did not answer a metadata request: {e}") from e
