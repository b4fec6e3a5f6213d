#!/usr/bin/env python3
"""The project's broker image's entrypoint (docker/kafka.Dockerfile): the Maven jars in a container.

It reads the same `KAFKA_*` variables as Apache's own `apache/kafka` image, so `docker-compose.yml` runs either
image unchanged: each variable becomes a `server.properties` key (`KAFKA_LOG_DIRS` -> `log.dirs`; `__` stands
for `_` and `___` for `-`, as in Apache's image), `CLUSTER_ID` formats an empty store, and then `kafka.Kafka`
replaces this process, so the JVM is PID 1 and gets `docker stop`'s SIGTERM itself.

Standard library only: it runs on the image's Python, with none of the project installed.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

KAFKA_HOME = Path("/opt/kafka")
# Variables of the image or the JVM, not broker settings.
NOT_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_JVM_OPTS", "KAFKA_HOME"}
# Apache's image's defaults, used only when no broker setting is given at all (as in that image).
DEFAULTS = {
    "node.id": "1",
    "process.roles": "broker,controller",
    "listeners": "PLAINTEXT://:9092,CONTROLLER://:9093",
    "advertised.listeners": "PLAINTEXT://localhost:9092",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "controller.quorum.voters": "1@localhost:9093",
    "log.dirs": "/var/lib/kafka/data",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}


def property_name(variable: str) -> str:
    """`KAFKA_LOG_DIRS` -> `log.dirs`, `KAFKA_A__B` -> `a_b`, `KAFKA_A___B` -> `a-b` (Apache's image's rule)."""
    name = variable.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def variable_name(key: str) -> str:
    """`log.dirs` -> `KAFKA_LOG_DIRS`: the inverse of `property_name`, to configure a container."""
    return "KAFKA_" + "".join({".": "_", "_": "__", "-": "___"}.get(c, c) for c in key).upper()


def server_properties(environ: Mapping[str, str]) -> dict[str, str]:
    """The broker's settings: one per `KAFKA_*` variable that is not the JVM's, or the defaults if none is set."""
    given = {
        property_name(variable): value
        for variable, value in environ.items()
        if variable.startswith("KAFKA_")
        and variable not in NOT_PROPERTIES
        and variable != "KAFKA_CONFIG_FILE"
    }
    # The store is always the image's volume unless a variable says otherwise.
    return {"log.dirs": DEFAULTS["log.dirs"]} | (given or DEFAULTS)


def own_address(environ: Mapping[str, str]) -> str:
    """localhost and the port of the first listener that is not the controller's: what the health check asks."""
    properties = server_properties(environ)
    controllers = set(properties.get("controller.listener.names", "CONTROLLER").split(","))
    for listener in properties["listeners"].split(","):
        name, _, address = listener.partition("://")
        if name not in controllers:
            return f"localhost:{address.rpartition(':')[2]}"
    return "localhost:9092"


def broker_answers(address: str, timeout_s: float = 5.0) -> bool:
    """Whether a broker at `host:port` answers an ApiVersions request without error (the health check)."""
    host, _, port = address.rpartition(":")
    client_id = b"healthcheck"
    # Request header v1: api_key 18 (ApiVersions), version 0, correlation id, client id; no body at v0.
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            connection.sendall(struct.pack(">i", len(request)) + request)
            head = _read_exactly(connection, 10)  # size, correlation id, error code
    except OSError:
        return False
    _size, correlation_id, error_code = struct.unpack(">iih", head)
    return bool(correlation_id == 1 and error_code == 0)


def _read_exactly(connection: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = connection.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def format_command(
    java: str, classpath: str, config: Path, cluster_id: str, options: Sequence[str] = ()
) -> list[str]:
    """KRaft's storage format with these options (`--standalone` for a new dynamic quorum, none for static
    voters); the jar-launched broker formats its store with it too."""
    return [
        java,
        "-cp",
        classpath,
        "kafka.tools.StorageTool",
        "format",
        *options,
        "-t",
        cluster_id,
        "-c",
        str(config),
    ]


def broker_command(java: str, classpath: str, config: Path, environ: Mapping[str, str]) -> list[str]:
    """`kafka.Kafka` with the heap and JVM options of `KAFKA_HEAP_OPTS` and `KAFKA_JVM_OPTS`."""
    heap = environ.get("KAFKA_HEAP_OPTS", "-Xmx512m -Xms512m").split()
    jvm = environ.get(
        "KAFKA_JVM_OPTS", "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true"
    ).split()
    log4j = f"-Dlog4j2.configurationFile={KAFKA_HOME / 'config' / 'log4j2.yaml'}"
    return [java, *heap, *jvm, log4j, "-cp", classpath, "kafka.Kafka", str(config)]


def main() -> None:
    """Write the settings, format the store once, then become the broker; or `check HOST:PORT` (exit 0 or 1)."""
    if sys.argv[1:2] == ["check"]:
        sys.exit(0 if broker_answers(sys.argv[2] if len(sys.argv) > 2 else own_address(os.environ)) else 1)
    if Path(sys.argv[0]).name == "kafka-broker-api-versions.sh":  # apache/kafka's health check, by that name
        given = (
            sys.argv[sys.argv.index("--bootstrap-server") + 1] if "--bootstrap-server" in sys.argv else None
        )
        sys.exit(0 if broker_answers(given or own_address(os.environ)) else 1)
    environ = dict(os.environ)
    properties = server_properties(environ)
    config = Path(environ.get("KAFKA_CONFIG_FILE", "/tmp/server.properties"))  # noqa: S108 (a tmpfs in compose)
    config.write_text("".join(f"{k}={v}\n" for k, v in sorted(properties.items())))
    java = "/usr/bin/java"
    classpath = f"{KAFKA_HOME / 'libs'}/*"
    log_dir = Path(properties["log.dirs"].split(",")[0])
    if not (log_dir / "meta.properties").exists():
        cluster_id = environ.get("CLUSTER_ID")
        if not cluster_id:
            sys.exit("kafka: the store is empty and CLUSTER_ID is not set: set it to format the store")
        static = "controller.quorum.voters" in properties
        pid = os.fork()
        if pid == 0:
            options = () if static else ("--standalone",)
            os.execv(java, format_command(java, classpath, config, cluster_id, options))  # noqa: S606
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"kafka: formatting the store in {log_dir} failed")
    sys.stdout.flush()
    os.execv(java, broker_command(java, classpath, config, environ))  # noqa: S606 (become the broker)


if __name__ == "__main__":
    main()
