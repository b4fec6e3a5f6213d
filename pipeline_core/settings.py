"""Settings shared by every service: where Kafka is, which topics, how large an image may be."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

# Room for the event's headers and Kafka's record-batch framing on top of the image bytes.
RECORD_OVERHEAD_BYTES = 64 * 1024


def split_list(value: object) -> object:
    """A list setting from the environment: a JSON list, or a comma-separated string."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class PipelineSettings(BaseSettings):
    """The Kafka connection, topic names and the size limits that topics, producers and consumers must agree on.

    Read from environment variables (upper-case field names) and an optional `.env` file. Each service
    subclasses this with its own fields; build it once at the entry point and pass it down.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of the Kafka cluster."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism, with a SASL_* protocol."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    kafka_client_id_prefix: str = Field("image-classifier", description="Start of every Kafka client id.")
    kafka_connect_timeout_s: float = Field(
        60.0, gt=0, description="How long to retry a broker that is not up yet."
    )

    topic_images: str = Field("images", description="Uploaded images, from the API to the consumers.")
    topic_predictions: str = Field("predictions", description="Results, from the consumers to the sink.")
    topic_dead_letter: str = Field(
        "images.dead-letter", description="Image records the consumers cannot read."
    )
    topic_feedback: str = Field("feedback", description="Users' reports on labels, from the API to the sink.")
    topic_partitions: int = Field(6, ge=1, le=1000, description="Partitions of a topic the services create.")
    topic_replication_factor: int = Field(
        1, ge=1, le=10, description="Replicas of a topic the services create."
    )
    consumer_group_inference: str = Field(
        "inference", description="Consumer group of the inference consumers."
    )
    consumer_group_sink: str = Field("results-sink", description="Consumer group of the results sink.")
    commit_interval_ms: int = Field(
        200,
        ge=0,
        le=60_000,
        description="The consumers (inference and sink) commit the offsets of finished work at most this often; "
        "0 commits after every batch. A crash re-delivers up to this much finished work, which the sink drops "
        "as duplicates.",
    )

    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest accepted upload, per file."
    )

    log_level: LogLevel = Field("INFO", description="Least severe log level printed.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_is_host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"KAFKA_BOOTSTRAP_SERVERS: {server!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> PipelineSettings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "KAFKA_SECURITY_PROTOCOL=SASL_* needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def max_record_bytes(self) -> int:
        """Largest Kafka record an image event can make; topic, producer and consumer limits use it."""
        return self.max_image_bytes + RECORD_OVERHEAD_BYTES

    def public_dict(self) -> dict[str, object]:
        """The effective settings for the start-up log line, secrets masked."""
        return {k: ("***" if isinstance(v, SecretStr) else v) for k, v in self.model_dump().items()}


DEV_JOB_ID_SECRET = "dev-only-job-id-secret-change-me"  # noqa: S105 - a known, logged development default


class WebSettings(PipelineSettings):
    """What the two web services (producer_api, results_sink) share: access control and job-id signing."""

    api_key: SecretStr | None = Field(
        None, description="When set, uploads and results need header `X-API-Key` (health stays open)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:8000", "http://127.0.0.1:8000"],
        description="Origins whose pages may call the API and stream results (JSON list or comma-separated).",
    )
    job_id_secret: SecretStr = Field(
        SecretStr(DEV_JOB_ID_SECRET),
        description="Signs job ids so the sink can tell a pending job from nonsense. Same value on API and sink.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_with_credentials(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("CORS_ORIGINS: '*' is refused; list the origins that may call the services")
        return value

    @property
    def job_id_key(self) -> bytes:
        """The job-id signing key as bytes."""
        return self.job_id_secret.get_secret_value().encode()
