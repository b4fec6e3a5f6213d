"""kafka_local/container.py, the broker image's entrypoint: apache/kafka's variables, read the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from kafka_local import free_port
from kafka_local.container import (
    DEFAULTS,
    broker_answers,
    broker_command,
    format_command,
    own_address,
    property_name,
    server_properties,
    variable_name,
)
from kafka_local.provision import container_properties


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("KAFKA_LOG_DIRS", "log.dirs"),
        ("KAFKA_NODE_ID", "node.id"),
        ("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "listener.security.protocol.map"),
        ("KAFKA_CONFLUENT__ODD_NAME", "confluent_odd.name"),
        (
            "KAFKA_LISTENER_NAME_CLIENT_SCRAM___SHA___256_SASL_JAAS_CONFIG",
            "listener.name.client.scram-sha-256.sasl.jaas.config",
        ),
    ],
)
def test_variables_map_to_keys_as_in_apaches_image_and_back(variable: str, key: str) -> None:
    assert property_name(variable) == key
    assert variable_name(key) == variable


def test_the_jar_brokers_settings_survive_the_round_trip_through_variables() -> None:
    properties = container_properties(19092)
    environ = {variable_name(k): v for k, v in properties.items()} | {
        "PATH": "/usr/bin",
        "KAFKA_HEAP_OPTS": "-Xmx1g",
    }
    assert server_properties(environ) == properties


def test_no_broker_variable_gives_a_single_node_broker_and_any_variable_replaces_the_defaults() -> None:
    assert server_properties({"PATH": "/bin"}) == DEFAULTS
    given = server_properties({"KAFKA_NODE_ID": "3", "KAFKA_HEAP_OPTS": "-Xmx1g", "KAFKA_JVM_OPTS": "-X"})
    assert given == {"node.id": "3", "log.dirs": DEFAULTS["log.dirs"]}, "JVM options are not broker settings"


def test_the_store_is_formatted_with_the_options_given() -> None:
    command = format_command("java", "cp", Path("/conf/server.properties"), "id", ["--standalone"])
    assert command[4:6] == ["format", "--standalone"]
    assert command[command.index("-t") + 1] == "id" and command[-1] == "/conf/server.properties"


def test_the_jvm_takes_the_heap_and_options_given() -> None:
    command = broker_command(
        "java", "cp", Path("/conf/server.properties"), {"KAFKA_HEAP_OPTS": "-Xmx2g -Xms2g"}
    )
    assert command[1:3] == ["-Xmx2g", "-Xms2g"] and command[-2:] == ["kafka.Kafka", "/conf/server.properties"]


def test_the_health_check_asks_the_first_listener_that_is_not_the_controllers() -> None:
    assert own_address({}) == "localhost:9092"
    environ = {
        "KAFKA_LISTENERS": "CONTROLLER://:9093,PLAINTEXT://:29092",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    }
    assert own_address(environ) == "localhost:29092"


def test_the_health_check_tells_a_broker_from_no_broker(kafka_bootstrap: str) -> None:
    assert broker_answers(kafka_bootstrap)
    assert not broker_answers(f"127.0.0.1:{free_port()}", timeout_s=2)
