"""Connecting to Kafka: one blocking attempt, and a readiness probe; both run in worker threads."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from pipeline_core.clients import RoundRobinPartitioner, create_admin, create_producer, diagnose_connection
from pipeline_core.errors import BrokerUnavailableError
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import ensure_topics, pipeline_topics

logger = logging.getLogger(__name__)

TCP_CHECK_TIMEOUT_S = 1.0
BOOTSTRAP_TIMEOUT_MS = 5_000
# send() blocks only when a topic's metadata is unknown; it is fetched at connect time, so this is a cap.
MAX_BLOCK_MS = 1_000
# kafka-python backs reconnects off up to 30 s; an API should notice a returning broker within a second or so.
RECONNECT_BACKOFF_MAX_MS = 1_000


@dataclass(frozen=True, slots=True)
class Connection:
    """The producer every request shares (kafka-python's is thread-safe), and an admin client for probes."""

    producer: KafkaProducer
    admin: KafkaAdminClient

    def close(self, timeout_s: float) -> None:
        """Flush what is buffered (bounded), then close both clients."""
        try:
            self.producer.close(timeout=timeout_s)
        except KafkaTimeoutError:
            logger.warning(
                "Kafka did not acknowledge every buffered record within %.0f s; dropping them (their uploads "
                "were already answered 503 or are being cut off by the shutdown)",
                timeout_s,
            )
            # kafka-python 3.0's close() raises from its flush before stopping the sender thread, which then
            # retries forever; force the sender down (aborting the batches), and close() completes at once.
            self.producer._sender.force_close()
            self.producer._sender.join(timeout_s)
            self.producer.close(timeout=0)
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
    try:
        producer = create_producer(
            settings,
            "api",
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            max_block_ms=MAX_BLOCK_MS,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            partitioner=RoundRobinPartitioner(),
        )
    except KafkaError as e:
        # A refused certificate or password reads, to kafka-python, as a broker that does not answer: say which
        # setting is wrong (in the log and in /readyz), and keep retrying, as for a broker that is down.
        reason = diagnose_connection(settings) or f"did not answer: {e}"
        raise BrokerUnavailableError(f"Kafka at {settings.kafka_bootstrap_servers}: {reason}") from e
    try:
        admin = create_admin(settings, "api")
    except KafkaError as e:
        producer.close(timeout=0)
        raise BrokerUnavailableError(f"Kafka admin connection failed: {e}") from e
    connection = Connection(producer, admin)
    try:
        ensure_topics(admin, pipeline_topics(settings))
        for topic in (settings.topic_images, settings.topic_feedback):
            producer.partitions_for(topic)
    except KafkaError as e:
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
        connection.admin.describe_cluster()
    except KafkaError as e:
        raise BrokerUnavailableError(f"Kafka did not answer a metadata request: {e}") from e
