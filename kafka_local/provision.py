"""The one rule for reaching a broker, shared by the test fixtures and `make run`.

1. `KAFKA_BOOTSTRAP_SERVERS` is set: use that cluster.
2. Else, when asked (tests) and a Docker engine answers: the project's broker image (docker/kafka.Dockerfile, the
   same jars, built here if missing) in a container, via testcontainers.
3. Else: the jar-launched local broker.

`KAFKA_TEST_BROKER=jar` or `=container` forces 2 or 3 where both would do (to run a suite on each).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka_local.broker import LocalBroker, _server_properties, free_port, new_cluster_id
from kafka_local.cluster import LocalCluster, Security
from kafka_local.container import variable_name

logger = logging.getLogger(__name__)

CONTAINER_LABEL = "kafka-image-classifier.test-broker"


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
    choice = os.environ.get("KAFKA_TEST_BROKER", "auto")
    if try_docker and choice != "jar":
        started = _start_container(required=choice == "container")
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


def container_properties(port: int) -> dict[str, str]:
    """The jar-launched broker's settings, for a container whose `port` is mapped to the same port on 127.0.0.1:
    the same broker either way, so the same tests pass on both. The same number inside and out, because the
    broker also reaches itself at its advertised address (to verify transactions, KIP-890)."""
    properties = _server_properties(Path("/var/lib/kafka"), port, 9093)
    properties |= {
        "listeners": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://localhost:9093",
        "controller.quorum.bootstrap.servers": "localhost:9093",
        "log.dirs": "/var/lib/kafka/data",
    }
    return properties


def _start_container(*, required: bool = False) -> tuple[Any, str] | None:
    """The project's broker image in a container, or None when no Docker engine answers (`required`: raise).

    testcontainers' KafkaContainer scripts Confluent images only, so this is a generic container configured
    through the image's KAFKA_* variables, advertising the host port it is mapped to. No Ryuk (its image cannot
    be pulled here): the fixture stops the container itself.
    """
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        import docker
    except ImportError:
        if required:
            raise
        return None
    if not _docker_answers(docker):
        if required:
            raise RuntimeError("KAFKA_TEST_BROKER=container, but no Docker engine answers")
        return None
    from docker_local.images import broker_image, python_base

    image = broker_image(python_base(os.environ.get("PYTHON_IMAGE") or None))
    port = free_port()
    container = (
        DockerContainer(image)
        .with_bind_ports(port, port)
        .with_env("CLUSTER_ID", new_cluster_id())
        .with_tmpfs_mount("/tmp", "size=64m")  # noqa: S108 (the container's own tmpfs)
        .with_kwargs(labels={CONTAINER_LABEL: "1"}, read_only=True)
        .waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    )
    for key, value in container_properties(port).items():
        container = container.with_env(variable_name(key), value)
    try:
        container.start()
    except BaseException:
        container.stop()  # a container that never became a broker is removed, not left running
        raise
    logger.info("Kafka broker in a container of %s at 127.0.0.1:%d", image, port)
    return container, f"127.0.0.1:{port}"


def _docker_answers(docker) -> bool:  # type: ignore[no-untyped-def]
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        logger.info(
            "no Docker engine (no DOCKER_HOST, no /var/run/docker.sock); using the jar-launched broker"
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
