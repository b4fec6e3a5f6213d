"""Settings shared by every service: where Kafka is, which topics, how large an image may be."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
ProcessingGuarantee = Literal["exactly-once", "at-least-once"]
KafkaClientName = Literal["confluent-kafka", "kafka-python"]

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
    kafka_ssl_cafile: str | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates, with an SSL or SASL_SSL "
        "protocol (unset: the system's CAs).",
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="PEM client certificate, for brokers that authenticate clients by TLS (mTLS)."
    )
    kafka_ssl_keyfile: str | None = Field(None, description="PEM private key of KAFKA_SSL_CERTFILE.")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of KAFKA_SSL_KEYFILE when it is encrypted (never logged)."
    )
    kafka_client: KafkaClientName = Field(
        "confluent-kafka",
        description="The Kafka client library of the consumers and producers: confluent-kafka (librdkafka; "
        "less CPU per image in every service, docs/benchmarks.md) or kafka-python (pure Python); also of the "
        "services' admin clients (topics, the admission's offset queries, the readiness probe).",
    )
    kafka_client_id_prefix: str = Field("image-classifier", description="Start of every Kafka client id.")
    kafka_connect_timeout_s: float = Field(
        60.0, gt=0, description="How long to retry a broker that is not up yet."
    )

    topic_images: str = Field("images", description="Uploaded images, from the API to the consumers.")
    topic_predictions: str = Field("predictions", description="Results, from the consumers to the sink.")
    topic_predictions_shadow: str = Field(
        "predictions.shadow",
        description="A shadow model's results, from its consumer group to the sink, which stores them beside the "
        "primary's and compares (docs/model.md, rollout); no client is answered from it.",
    )
    topic_dead_letter: str = Field(
        "images.dead-letter", description="Image records the consumers cannot read."
    )
    topic_dead_letter_shadow: str = Field(
        "images.dead-letter.shadow",
        description="Image records the shadow model's consumers could not process (apart from the primary's, so "
        "that replaying the dead letters never feeds an image twice).",
    )
    topic_feedback: str = Field("feedback", description="Users' reports on labels, from the API to the sink.")
    topic_partitions: int = Field(6, ge=1, le=1000, description="Partitions of a topic the services create.")
    topic_replication_factor: int = Field(
        1, ge=1, le=10, description="Replicas of a topic the services create."
    )
    topic_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        le=10,
        description="`min.insync.replicas` of a topic the services create (unset: the broker's default). With "
        "acks=all, a write succeeds once this many replicas have it: 2 of 3 survives one broker's loss.",
    )
    topic_images_retention_ms: int = Field(
        24 * 3600 * 1000,
        ge=60_000,
        description="How long the images topic keeps an upload (its bytes are the user's photo; they serve only "
        "re-delivery after a crash). Applies to topics the services create.",
    )
    topic_dead_letter_retention_ms: int = Field(
        7 * 24 * 3600 * 1000,
        ge=60_000,
        description="How long the dead-letter topic keeps what no consumer could process (time to look and replay).",
    )
    consumer_group_inference: str = Field(
        "inference", description="Consumer group of the inference consumers."
    )
    consumer_group_shadow: str = Field(
        "inference-shadow",
        description="Consumer group of a shadow model's consumers (INFERENCE_ROLE=shadow).",
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

    processing_guarantee: ProcessingGuarantee = Field(
        "exactly-once",
        description="exactly-once: an inference consumer's predictions, dead letters and consumed offsets "
        "commit in one Kafka transaction, so a crash or rebalance never puts a result on the topic twice; "
        "at-least-once: offsets are committed after the outputs are acknowledged, and a crash re-delivers up to "
        "COMMIT_INTERVAL_MS of finished work (docs/reliability.md has the cost of each).",
    )
    transaction_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        le=900_000,
        description="How long the broker keeps a transaction of a consumer that died open: read_committed "
        "readers wait at most this long before the coordinator aborts it (a restarted consumer aborts it at once).",
    )
    consumer_instance_id: str | None = Field(
        None,
        max_length=100,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Stable name of this consumer process (make run and compose set it). With exactly-once it "
        "makes the transactional id, so that a restarted instance fences its predecessor at once; unset, the "
        "host name and process id are used.",
    )
    tracing_exporter: Literal["none", "otlp", "console"] = Field(
        "none",
        description="Where each service's OpenTelemetry spans go (one trace per image across the hops; "
        "docs/operations.md): none records and propagates nothing; otlp "
        "exports over OTLP/HTTP to the collector the standard OTEL_EXPORTER_OTLP_ENDPOINT names (default "
        "http://localhost:4318); console prints them.",
    )
    tracing_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of the traces started here that are recorded; a trace that comes in sampled (or not) "
        "keeps that decision at every hop.",
    )
    poison_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="A record whose handling fails this many times in a row (while others go through) goes to "
        "the dead-letter topic instead of being retried again.",
    )

    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest accepted upload, per file."
    )

    max_image_pixels: int = Field(
        25_000_000,
        ge=1,
        le=1_000_000_000,
        description="Largest width x height accepted by the API and decoded by a consumer: a 24-megapixel "
        "photo fits. Decompression bombs, and a consumer's work per image, grow with it.",
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

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        name = str(info.field_name).upper()
        try:
            with open(value, "rb") as pem:
                head = pem.read(64 * 1024)
        except OSError as e:
            raise ValueError(f"{name}: cannot read {value!r} ({e.strerror})") from None
        if b"-----BEGIN " not in head:
            raise ValueError(f"{name}: {value!r} is not a PEM file")
        return value

    @model_validator(mode="after")
    def _tls_is_consistent(self) -> PipelineSettings:
        tls_files = self.kafka_ssl_cafile or self.kafka_ssl_certfile or self.kafka_ssl_keyfile
        if tls_files and not self.kafka_security_protocol.endswith("SSL"):
            raise ValueError(
                "KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}: use SSL or SASL_SSL, or unset them"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together: set both or neither")
        if (
            self.topic_min_insync_replicas is not None
            and self.topic_min_insync_replicas > self.topic_replication_factor
        ):
            raise ValueError(
                f"TOPIC_MIN_INSYNC_REPLICAS ({self.topic_min_insync_replicas}) is above "
                f"TOPIC_REPLICATION_FACTOR ({self.topic_replication_factor}): no write could ever succeed"
            )
        return self

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
        """The effective settings for the start-up log line, secrets and passwords in URLs masked."""
        return {k: _masked(v) for k, v in self.model_dump().items()}


def mask_url_password(text: str) -> str:
    """`text` with the password of a `scheme://user:password@host` URL replaced by `***`."""
    scheme, sep, rest = text.partition("://")
    # Up to the last @: a password may hold an unescaped one. Masking too much only hides part of a log line.
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo and _is_url_scheme(scheme)):
        return text
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _is_url_scheme(text: str) -> bool:
    """Whether `text` can be a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`)."""
    return text[:1].isalpha() and text.isascii() and all(c.isalnum() or c in "+-." for c in text)


def _masked(value: object) -> object:
    """A setting's value as the log shows it: secrets as `***`, URLs without their password."""
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, str):
        return mask_url_password(value)
    if isinstance(value, list | tuple):
        return type(value)(_masked(item) for item in value)
    return value


DEV_JOB_ID_SECRET = "dev-only-job-id-secret-change-me"  # noqa: S105 - a known, logged development default
MIN_API_KEY_LENGTH = 16


class WebSettings(PipelineSettings):
    """What the two web services (producer_api, results_sink) share: access control and job-id signing."""

    api_key: SecretStr | None = Field(
        None,
        description="When set (at least 16 printable ASCII characters), uploads and results need header "
        "`X-API-Key` (health stays open); unset, everything is open. An empty value is refused.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:8000", "http://127.0.0.1:8000"],
        description="Origins whose pages may call the API and stream results (JSON list or comma-separated).",
    )
    job_id_secret: SecretStr = Field(
        SecretStr(DEV_JOB_ID_SECRET),
        description="Signs job ids so the sink can tell a pending job from nonsense. Same value on API and sink.",
    )

    expose_docs: bool = Field(
        True, description="Serve `/docs` and `/openapi.json`; false answers them 404 (a public port)."
    )
    expose_metrics: bool = Field(True, description="Serve `/metrics`; false answers it 404 (a public port).")

    # The HTTP server's own defences (pipeline_core/serving.py); docs/operations.md has what a proxy adds.
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A request's head (request line and headers) must arrive within this long; else 408, closed.",
    )
    body_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Longest pause allowed between two chunks of a request body; else 408, closed.",
    )
    body_min_rate_bps: int = Field(
        16 * 1024,
        ge=1,
        le=1 << 30,
        description="Slowest average rate (bytes/s) a request body may arrive at, once BODY_IDLE_TIMEOUT_S "
        "has passed; else 408, closed.",
    )
    keep_alive_timeout_s: float = Field(
        75.0,
        ge=1,
        le=3600,
        description="How long an idle keep-alive connection stays open: keep it longer than the idle timeout "
        "of the clients' (or the proxy's) connection pools, so they close first.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Open connections above this many get 503 + Retry-After on their first request, closed.",
    )
    max_concurrent_requests: int = Field(
        64,
        ge=1,
        le=1_000_000,
        description="Requests in progress above this many get 503 + Retry-After before their body is read "
        "(event streams have caps of their own). It bounds the time a request queues inside the process: "
        "at a few ms of CPU each, 64 is a fraction of a second on one core.",
    )
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        le=1 << 40,
        description="Request-body bytes held at once across all requests; a request that would pass it gets "
        "503 + Retry-After instead of the process running out of memory.",
    )

    @field_validator("api_key")
    @classmethod
    def _api_key_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value()
        if not key:
            # An empty key used to turn authentication off without a word: unset means open, never "".
            raise ValueError("API_KEY is empty; unset it to leave the services open, or set a real key")
        if len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(f"API_KEY is {len(key)} characters long; use at least {MIN_API_KEY_LENGTH}")
        if not (key.isascii() and key.isprintable()) or key != key.strip():
            # It travels in an HTTP header: other characters, and spaces at either end, do not survive.
            raise ValueError("API_KEY: use printable ASCII characters only, with no spaces at either end")
        return value

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
