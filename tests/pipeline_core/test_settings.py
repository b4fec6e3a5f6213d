"""Settings: defaults, environment variables, and refusals that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline_core.settings import RECORD_OVERHEAD_BYTES, PipelineSettings


def make(**values: object) -> PipelineSettings:
    return PipelineSettings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_defaults_are_a_local_broker_and_six_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = make()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.topic_partitions == 6
    assert settings.max_record_bytes == settings.max_image_bytes + RECORD_OVERHEAD_BYTES


def test_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    settings = make()
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.topic_partitions == 12


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("kafka_bootstrap_servers", "localhost", "KAFKA_BOOTSTRAP_SERVERS"),
        ("topic_partitions", 0, "topic_partitions"),
        ("max_image_bytes", 10, "max_image_bytes"),
        ("log_level", "LOUD", "log_level"),
        ("processing_guarantee", "exactly-twice", "processing_guarantee"),
        ("transaction_timeout_ms", 10, "transaction_timeout_ms"),
        ("consumer_instance_id", "inference 1; rm -rf", "consumer_instance_id"),
        ("consumer_instance_id", "x" * 101, "consumer_instance_id"),
        ("poison_max_attempts", 0, "poison_max_attempts"),
        ("topic_images_retention_ms", 5, "topic_images_retention_ms"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(name: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**{name: value})


def test_sasl_needs_credentials_and_hides_the_password() -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_MECHANISM"):
        make(kafka_security_protocol="SASL_SSL")
    settings = make(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="hunter2",
    )
    assert settings.public_dict()["kafka_sasl_password"] == "***"
    assert "hunter2" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = make()
    with pytest.raises(ValidationError):
        settings.topic_partitions = 3  # type: ignore[misc]


def test_tls_files_are_checked_at_start_naming_the_setting(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x00")
    secured = {"kafka_security_protocol": "SSL"}
    with pytest.raises(ValidationError, match="KAFKA_SSL_CAFILE: cannot read"):
        make(**secured, kafka_ssl_cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match=r"KAFKA_SSL_CAFILE: .* is not a PEM file"):
        make(**secured, kafka_ssl_cafile=str(not_pem))
    with pytest.raises(ValidationError, match="KAFKA_SECURITY_PROTOCOL is PLAINTEXT"):
        make(kafka_ssl_cafile=str(ca))
    with pytest.raises(ValidationError, match="KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together"):
        make(**secured, kafka_ssl_certfile=str(ca))
    assert make(**secured, kafka_ssl_cafile=str(ca)).kafka_ssl_cafile == str(ca)
    hidden = make(**secured, kafka_ssl_cafile=str(ca), kafka_ssl_key_password="hunter2").public_dict()
    assert hidden["kafka_ssl_key_password"] == "***"


def test_min_insync_replicas_cannot_pass_the_replication_factor() -> None:
    with pytest.raises(ValidationError, match="TOPIC_MIN_INSYNC_REPLICAS"):
        make(topic_replication_factor=1, topic_min_insync_replicas=2)
    assert make(topic_replication_factor=3, topic_min_insync_replicas=2).topic_min_insync_replicas == 2
