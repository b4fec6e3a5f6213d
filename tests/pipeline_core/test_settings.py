"""Settings: defaults, environment variables, and refusals that name the setting."""

from __future__ import annotations

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
