"""Settings of the upload API (environment variables, upper-case names)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from pipeline_core.settings import WebSettings, split_list

ImageFormat = Literal["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]


class ApiSettings(WebSettings):
    """One producer_api instance. Several may run behind a load balancer; they share nothing but Kafka."""

    api_host: str = Field("127.0.0.1", description="Interface the API listens on (0.0.0.0 in a container).")
    api_port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    results_public_url: str = Field(
        "http://localhost:8001",
        description="The sink's base URL as clients see it; `result_url` and `events_url` start with it.",
    )
    results_internal_url: str | None = Field(
        None,
        description="The sink's base URL as this API reaches it, for /predict (unset: RESULTS_PUBLIC_URL).",
    )
    max_files_per_request: int = Field(
        16, ge=1, le=256, description="Most images one POST /v1/images may carry."
    )
    accepted_formats: Annotated[tuple[ImageFormat, ...], NoDecode] = Field(
        ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"),
        description="Accepted image formats (Pillow names), judged from the bytes, never the file name.",
    )
    validation_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads that check uploads' image headers, off the event loop (about one per core).",
    )
    max_queue_wait_s: float = Field(
        0.5,
        ge=0,
        le=3600,
        description="Uploads get 429 when their images would wait longer than this behind the backlog, at "
        "the consumers' measured throughput (0: no wait limit). Keeps accepted uploads' round trip short.",
    )
    admission_min_backlog: int = Field(
        32,
        ge=0,
        le=1_000_000,
        description="Below this many waiting images every upload is admitted, and the consumers' throughput is "
        "learnt only above it: enough queued to keep every consumer's batches full (at least twice consumers x "
        "BATCH_MAX_SIZE), so that the wait limit never starves the consumers it measures.",
    )
    max_backlog_images: int = Field(
        256,
        ge=0,
        le=10_000_000,
        description="Uploads get 429 while this many accepted images wait for a consumer, whatever the "
        "throughput (0: no count limit).",
    )
    backlog_check_interval_s: float = Field(
        0.25, gt=0, le=60, description="How often the backlog (the inference group's lag) is measured."
    )
    predict_timeout_s: float = Field(
        30.0, gt=0, le=600, description="How long POST /predict waits for a result."
    )
    publish_timeout_s: float = Field(
        10.0, gt=0, le=120, description="How long an upload waits for the broker's acks."
    )
    broker_startup_wait_s: float = Field(
        10.0,
        ge=0,
        le=600,
        description="How long start-up waits for Kafka before serving anyway (not ready), still retrying.",
    )
    ready_cache_s: float = Field(1.0, ge=0, le=60, description="How long a /readyz broker check is reused.")
    shutdown_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Graceful-shutdown time for requests in flight and the producer's flush.",
    )

    @field_validator("results_public_url", "results_internal_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        name = str(info.field_name).upper()
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(f"{name}: {value!r} must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("accepted_formats", mode="before")
    @classmethod
    def _formats_list(cls, value: object) -> object:
        items = split_list(value)
        return [str(item).upper() for item in items] if isinstance(items, list) else items

    @field_validator("accepted_formats")
    @classmethod
    def _some_format(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("ACCEPTED_FORMATS: accept at least one image format")
        return value

    @model_validator(mode="after")
    def _one_request_fits_in_flight(self) -> ApiSettings:
        largest = self.max_files_per_request * self.max_record_bytes
        if self.max_body_bytes_in_flight < largest:
            raise ValueError(
                f"MAX_BODY_BYTES_IN_FLIGHT ({self.max_body_bytes_in_flight}) is below the largest upload "
                f"(MAX_FILES_PER_REQUEST x MAX_IMAGE_BYTES plus framing: {largest} bytes), which would be "
                "refused for ever; raise it or lower those"
            )
        return self

    @property
    def results_url_for_api(self) -> str:
        """Where /predict reaches the sink."""
        return self.results_internal_url or self.results_public_url
