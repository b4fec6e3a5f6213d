"""The one rule for reaching a broker, shared by the test fixtures and `make run`.

1. `KAFKA_BOOTSTRAP_SERVERS` is set: use that cluster.
2. Else, when asked (tests) and a Docker daemon answers: an `apache/kafka` container via testcontainers.
3. Else: the jar-launched local broker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka_local.broker import LocalBroker, free_port
from kafka_local.cluster import LocalCluster, Security

logger = logging.getLogger(__name__)

KAFKA_IMAGE = "apache/kafka:4.1.1"


@contextmanager
def provide_broker(
    data_dir: Path,
    *,
    try_docker: bool,
    port: int | None = None,
    controller_port: int | None = None,
    brokers: int = 1,
    security: Security = "PLAINTEXT",
) -> Iterator[tuple[str, LocalBroker | LocalCluster | None]]:
    """Yield `(bootstrap_servers, what_was_started_or_None)` by the rule above; stop what it started on exit.

    `brokers` > 1 or a secured `security` asks for a jar-launched `LocalCluster` (never a container)."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        logger.info("using the Kafka cluster at %s (KAFKA_BOOTSTRAP_SERVERS)", existing)
        yield existing, None
        return
    if brokers > 1 or security != "PLAINTEXT":
        first = port or free_port()
        cluster = LocalCluster(
            data_dir, brokers, security, ports=[first + n if port else free_port() for n in range(brokers)]
        )
        with cluster:
            yield cluster.bootstrap_servers, cluster
        return
    if try_docker:
        started = _start_container()
        if started is not None:
            container, bootstrap = started
            try:
                yield bootstrap, None
            finally:
                container.stop()
            return
    broker = LocalBroker(data_dir, port or free_port(), controller_port or free_port())
    with broker:
        yield broker.bootstrap_servers, broker


def _start_container() -> tuple[Any, str] | None:
    """An `apache/kafka` container, or None when no Docker daemon answers (the usual case on our machines).

    testcontainers' KafkaContainer scripts Confluent images only, so this is a generic container configured
    through the image's documented KAFKA_* variables, advertising the host port it is mapped to.
    """
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        import docker
    except ImportError:
        return None
    if not _docker_answers(docker):
        return None
    port = free_port()
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "1000",
        "KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }
    container = DockerContainer(KAFKA_IMAGE).with_bind_ports(9092, port)
    for key, value in env.items():
        container = container.with_env(key, value)
    container.start()
    wait_for_logs(container, "Kafka Server started", timeout=120)
    return container, f"127.0.0.1:{port}"


def _docker_answers(docker) -> bool:  # type: ignore[no-untyped-def]
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        logger.info(
            "no Docker daemon (no DOCKER_HOST, no /var/run/docker.sock); using the jar-launched broker"
        )
        return False
    client = None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        logger.info("no Docker daemon (%s); using the jar-launched broker", type(e).__name__)
        return False
    finally:
        if client is not None:
            client.close()
    return True
