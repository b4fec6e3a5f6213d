"""Kafka client factories: every producer, consumer and admin client of the project is made here."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import ssl
from collections import defaultdict
from typing import Any

from confluent_kafka import KafkaException
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError
from kafka.partitioner import Partitioner

from pipeline_core.confluent_client import (
    ConfluentAdmin,
    ConfluentConsumer,
    ConfluentProducer,
    ConfluentSharedProducer,
)
from pipeline_core.confluent_client import translate as confluent_translate
from pipeline_core.errors import BrokerUnavailableError, KafkaAccessError
from pipeline_core.kafka_client import (
    AdminClient,
    ConsumerClient,
    ProducerClient,
    SharedProducer,
    partition_names,
)
from pipeline_core.kafka_python_client import (
    KafkaPythonAdmin,
    KafkaPythonConsumer,
    KafkaPythonProducer,
    KafkaPythonSharedProducer,
    translate,
)
from pipeline_core.retry import retry_call
from pipeline_core.settings import PipelineSettings

__all__ = [
    "RoundRobinPartitioner",
    "create_admin",
    "create_admin_client",
    "create_consumer",
    "create_consumer_client",
    "create_producer",
    "create_producer_client",
    "create_shared_producer",
    "partition_names",
    "wait_for_admin",
]

logger = logging.getLogger(__name__)


def _connection(settings: PipelineSettings, role: str) -> dict[str, Any]:
    """Where and how to connect, in neutral names (`_KAFKA_PYTHON_NAMES`, `_LIBRDKAFKA_NAMES` say them in each
    library's words); settings that are unset are left out."""
    password = settings.kafka_sasl_password
    key_password = settings.kafka_ssl_key_password
    connection = {
        "servers": settings.kafka_bootstrap_servers,
        "client_id": f"{settings.kafka_client_id_prefix}-{role}-{socket.gethostname()}-{os.getpid()}",
        "protocol": settings.kafka_security_protocol,
        # A broker that comes back should be used again within a second (kafka-python backs off up to 30 s).
        "reconnect_backoff_max_ms": 1000,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_username": settings.kafka_sasl_username if settings.kafka_sasl_mechanism else None,
        "sasl_password": password.get_secret_value() if password and settings.kafka_sasl_mechanism else None,
        "ca_file": settings.kafka_ssl_cafile,
        "cert_file": settings.kafka_ssl_certfile,
        "key_file": settings.kafka_ssl_keyfile if settings.kafka_ssl_certfile else None,
        "key_password": key_password.get_secret_value() if key_password else None,
    }
    return {name: value for name, value in connection.items() if value is not None}


_KAFKA_PYTHON_NAMES = {
    "servers": "bootstrap_servers",
    "client_id": "client_id",
    "protocol": "security_protocol",
    "reconnect_backoff_max_ms": "reconnect_backoff_max_ms",
    "sasl_mechanism": "sasl_mechanism",
    "sasl_username": "sasl_plain_username",
    "sasl_password": "sasl_plain_password",
    "ca_file": "ssl_cafile",
    "cert_file": "ssl_certfile",
    "key_file": "ssl_keyfile",
    "key_password": "ssl_password",
}
_LIBRDKAFKA_NAMES = {
    "servers": "bootstrap.servers",
    "client_id": "client.id",
    "protocol": "security.protocol",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ca_file": "ssl.ca.location",
    "cert_file": "ssl.certificate.location",
    "key_file": "ssl.key.location",
    "key_password": "ssl.key.password",
}


def _common(settings: PipelineSettings, role: str) -> dict[str, Any]:
    """The connection in kafka-python's words."""
    config = {_KAFKA_PYTHON_NAMES[name]: value for name, value in _connection(settings, role).items()}
    config["bootstrap_servers"] = settings.kafka_bootstrap_servers.split(",")
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
    """kafka-python's own admin client, for the tools (the launcher's ACLs and group checks, the tests); the
    services use `create_admin_client`."""
    return KafkaAdminClient(**(_common(settings, role) | {"request_timeout_ms": 10_000} | overrides))


def create_admin_client(settings: PipelineSettings, role: str) -> AdminClient:
    """The services' admin client (topics, a group's progress, the readiness probe) on the KAFKA_CLIENT library.
    kafka-python's bootstraps here, so a broker that does not answer raises at once; librdkafka's connects in
    the background and answers (or fails) at its first request."""
    if settings.kafka_client == "confluent-kafka":
        return ConfluentAdmin(_librdkafka_common(settings, role), role)
    try:
        return KafkaPythonAdmin(create_admin(settings, role))
    except KafkaError as e:
        raise translate(e, f"{role}: connecting to Kafka") from e


def wait_for_admin(settings: PipelineSettings, role: str, timeout_s: float | None = None) -> AdminClient:
    """An admin client, once the broker answers a metadata request; retries with logged attempts, then gives up."""
    timeout = timeout_s if timeout_s is not None else settings.kafka_connect_timeout_s

    diagnosed = False

    def connect() -> AdminClient:
        nonlocal diagnosed
        admin: AdminClient | None = None
        try:
            admin = create_admin_client(settings, role)
            admin.broker_count()
            return admin
        except BrokerUnavailableError as e:
            if admin is not None:
                admin.close()
            # Once, at the first failure: a refused certificate or password will not pass on a retry.
            reason = None if diagnosed else diagnose_connection(settings)
            diagnosed = True
            if reason is not None:
                raise KafkaAccessError(
                    f"{role}: cannot use Kafka at {settings.kafka_bootstrap_servers}: {reason}"
                ) from e
            raise BrokerUnavailableError(f"Kafka at {settings.kafka_bootstrap_servers}: {e}") from e
        except BaseException:
            if admin is not None:
                admin.close()
            raise

    try:
        return retry_call(connect, f"{role}: connecting to Kafka", timeout_s=timeout)
    except BrokerUnavailableError as e:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {settings.kafka_bootstrap_servers} within {timeout:.0f} s "
            "(set KAFKA_BOOTSTRAP_SERVERS, or start the local broker with `make run`)"
        ) from e


def diagnose_connection(settings: PipelineSettings, timeout_s: float = 3.0) -> str | None:
    """Why the first bootstrap server cannot be used with these settings, naming the setting to change; None
    when nothing listens there (the broker may be starting) or the TLS set-up is fine.

    kafka-python reports a refused TLS handshake, or plaintext sent to a TLS listener, only as a broker that
    never answers; one handshake of our own tells which it is.
    """
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout_s)
    except OSError:
        return None
    with raw:
        uses_tls = settings.kafka_security_protocol.endswith("SSL")
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if not uses_tls:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with context.wrap_socket(raw, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as e:
            trusted = settings.kafka_ssl_cafile or "the system's CAs"
            return (
                f"the broker's TLS certificate is not trusted ({e.verify_message}); KAFKA_SSL_CAFILE must name "
                f"the CA that signed it (now: {trusted})"
            )
        except (ssl.SSLError, OSError) as e:
            if uses_tls:
                return (
                    f"the broker did not complete a TLS handshake ({type(e).__name__}): it may not speak TLS; "
                    f"KAFKA_SECURITY_PROTOCOL is {settings.kafka_security_protocol}"
                )
            return None
        if not uses_tls:
            return (
                f"the broker speaks TLS, but KAFKA_SECURITY_PROTOCOL is {settings.kafka_security_protocol}: "
                "use SSL or SASL_SSL (and KAFKA_SSL_CAFILE for its CA)"
            )
    return _sasl_refusal(settings) if settings.kafka_sasl_mechanism else None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _sasl_refusal(settings: PipelineSettings) -> str | None:
    """The broker's answer to our credentials, if it refused them. kafka-python logs a refused SASL
    authentication at each bootstrap attempt and then reports only that it could not bootstrap; one attempt
    here, with its log collected, tells the two apart."""
    collect = _Collect()
    network = logging.getLogger("kafka.net")
    network.addHandler(collect)
    try:
        create_admin(settings, "diagnosis", request_timeout_ms=3000).close()
    except KafkaError:
        pass
    finally:
        network.removeHandler(collect)
    if any("SaslAuthenticationFailed" in message for message in collect.messages):
        return (
            f"the broker refused the credentials of KAFKA_SASL_USERNAME={settings.kafka_sasl_username!r} "
            f"with KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}: check KAFKA_SASL_PASSWORD"
        )
    return None


def _librdkafka_common(settings: PipelineSettings, role: str) -> dict[str, Any]:
    """The connection in librdkafka's words."""
    config = {_LIBRDKAFKA_NAMES[name]: value for name, value in _connection(settings, role).items()}
    config["socket.timeout.ms"] = 10_000  # also bounds a synchronous offset commit in flight
    return config


def create_consumer_client(
    settings: PipelineSettings,
    role: str,
    group_id: str,
    *,
    max_poll_interval_ms: int = 300_000,
    session_timeout_ms: int = 10_000,
    round_robin: bool = False,
) -> ConsumerClient:
    """A runtime consumer on the KAFKA_CLIENT library: reads only committed records (so that aborted
    transactions are never seen), commits only when told to, and can fetch the largest image record.
    `round_robin` deals partitions to members in turn rather than in blocks."""
    fetch_max = max(52_428_800, settings.max_record_bytes)
    if settings.kafka_client == "confluent-kafka":
        config = _librdkafka_common(settings, role) | {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "max.partition.fetch.bytes": settings.max_record_bytes,
            "fetch.max.bytes": fetch_max,
            "receive.message.max.bytes": fetch_max + 65_536,
            # librdkafka prefetches into a local queue, 64 MB by default: 16 MB (or two of the largest records)
            # keeps a consumer's memory small and still holds hundreds of photos ahead of the model. A full queue
            # is fetched again after fetch.queue.backoff.ms, 1 s by default: too long a gap for a consumer that
            # has just drained it.
            "queued.max.messages.kbytes": max(16_384, 2 * settings.max_record_bytes // 1024),
            "fetch.queue.backoff.ms": 50,
            "session.timeout.ms": min(session_timeout_ms, max_poll_interval_ms),  # librdkafka requires it
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": max_poll_interval_ms,
            "partition.assignment.strategy": "roundrobin" if round_robin else "range",
        }
        return ConfluentConsumer(config, role)
    overrides: dict[str, Any] = {
        "isolation_level": "read_committed",
        "max_poll_interval_ms": max_poll_interval_ms,
        "session_timeout_ms": session_timeout_ms,
    }
    if round_robin:
        overrides["partition_assignment_strategy"] = [RoundRobinPartitionAssignor]
    try:
        consumer = create_consumer(settings, role, group_id, **overrides)
    except KafkaError as e:
        raise translate(e, f"{role}: creating a consumer") from e
    return KafkaPythonConsumer(consumer)


def create_producer_client(
    settings: PipelineSettings, role: str, transactional_id: str | None = None
) -> ProducerClient:
    """A runtime producer on the KAFKA_CLIENT library (`acks=all`, idempotent); with a transactional id,
    initialised, which fences an older producer of that id."""
    if settings.kafka_client == "confluent-kafka":
        return _create_confluent_producer(settings, role, transactional_id)
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


def _librdkafka_producer(settings: PipelineSettings, role: str) -> dict[str, Any]:
    """`create_producer`'s guarantees in librdkafka's words: acks from every in-sync replica, idempotent."""
    return _librdkafka_common(settings, role) | {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.max.bytes": settings.max_record_bytes,
        "request.timeout.ms": 10_000,
        "message.timeout.ms": 30_000,
    }


def _create_confluent_producer(
    settings: PipelineSettings, role: str, transactional_id: str | None
) -> ConfluentProducer:
    config = _librdkafka_producer(settings, role)
    if transactional_id is not None:
        config |= {
            "transactional.id": transactional_id,
            "transaction.timeout.ms": settings.transaction_timeout_ms,
            # A record or a request of a transaction cannot outlive it (librdkafka requires both).
            "message.timeout.ms": min(30_000, settings.transaction_timeout_ms),
            "socket.timeout.ms": min(10_000, settings.transaction_timeout_ms + 100),
        }
    producer = ConfluentProducer(config, role)
    if transactional_id is not None:
        try:
            producer.producer.init_transactions(10.0)
        except KafkaException as e:
            producer.close(0)
            raise confluent_translate(e, f"{role}: initialising transactions as {transactional_id}") from e
    return producer


# A shared producer's send() blocks only when a topic's metadata is unknown; `prepare` fetches it, so this is a cap.
SHARED_MAX_BLOCK_MS = 1_000
SHARED_BOOTSTRAP_TIMEOUT_MS = 5_000


def create_shared_producer(settings: PipelineSettings, role: str) -> SharedProducer:
    """The producer a whole service shares (the API's), on the KAFKA_CLIENT library: `acks=all`, idempotent,
    records dealt to partitions in turn (`RoundRobinPartitioner` says why). Connects lazily with librdkafka;
    kafka-python bootstraps here and raises `KafkaError` if no broker answers."""
    if settings.kafka_client == "confluent-kafka":
        # librdkafka would buffer up to 1 GB; the API bounds its request bodies far below this anyway.
        config = _librdkafka_producer(settings, role) | {"queue.buffering.max.kbytes": 262_144}
        return ConfluentSharedProducer(config, role)
    producer = create_producer(
        settings,
        role,
        bootstrap_timeout_ms=SHARED_BOOTSTRAP_TIMEOUT_MS,
        max_block_ms=SHARED_MAX_BLOCK_MS,
        partitioner=RoundRobinPartitioner(),
    )
    return KafkaPythonSharedProducer(producer)
