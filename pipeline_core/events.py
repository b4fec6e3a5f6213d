"""The events on each topic, and the one place where they are turned into Kafka records and back.

Every record carries a `schema` header naming its event type and version (`image/1`). A reader refuses a
record of another type or an unknown version with `SchemaVersionError`, so that a producer and a consumer of
different versions fail loudly instead of misreading each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline_core.errors import DecodeError, SchemaVersionError

SCHEMA_HEADER = "schema"
# A header value may be null on the wire (Kafka allows it); readers must not assume bytes.
Headers = Sequence[tuple[str, bytes | None]]

IMAGE_SCHEMA = "image/1"
PREDICTION_SCHEMA = "prediction/2"
# Versions still read, as the current model: prediction/1 lacks only `traceparent` (read as null), so a sink
# upgraded before the consumers reads what they write meanwhile.
_EARLIER_READABLE = {"prediction/1"}
FEEDBACK_SCHEMA = "feedback/1"


class _Event(BaseModel):
    # Serialised, every field is written (defaults too): the published schemas say so (`schemas.py`).
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_serialization_defaults_required=True)


class ImageMeta(_Event):
    """What travels beside an image's bytes. Produced by producer_api, consumed by inference_consumer."""

    job_id: str = Field(min_length=1, max_length=64)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=100)
    received_at: float = Field(description="Unix time the API received the upload.")


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """An accepted upload: metadata in the headers, the image bytes as the record's value."""

    meta: ImageMeta
    image: bytes


class ScoredLabelModel(_Event):
    label: str
    wnid: str | None = None
    index: int
    score: float


class Timings(_Event):
    """Where the time of one job went, hop by hop (Unix times in seconds, durations in ms)."""

    received_at: float
    dequeued_at: float
    predicted_at: float
    preprocess_ms: float = Field(description="Decoding and resizing the whole batch this image was in.")
    inference_ms: float = Field(description="The one model call for that batch.")
    batch_size: int


class PredictionEvent(_Event):
    """One image's result. Produced by inference_consumer, consumed by results_sink."""

    job_id: str = Field(min_length=1, max_length=64)
    status: Literal["done", "failed"]
    filename: str = ""
    label: str | None = None
    score: float | None = None
    top: tuple[ScoredLabelModel, ...] = ()
    error: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    runtime: str | None = None
    timings: Timings | None = None
    traceparent: str | None = Field(
        None,
        max_length=55,
        pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        description="W3C trace context of the span that wrote this result, in the trace of its image from the "
        "upload on (null when tracing is off); the record's `traceparent` header carries the same (since "
        "prediction/2).",
    )


class FeedbackEvent(_Event):
    """A user's report on a result. Produced by producer_api, consumed by results_sink."""

    report: str = Field(max_length=10_000)
    job_id: str | None = Field(None, max_length=64)
    received_at: float


def schema_of(headers: Headers | None) -> str | None:
    """The `schema` header of a record, or None when it has none."""
    for key, value in headers or ():
        if key == SCHEMA_HEADER:
            return (value or b"").decode("utf-8", "replace")
    return None


def header(headers: Headers | None, name: str) -> bytes | None:
    """The first value of header `name` (None when it is absent or null)."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def bounded(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters with non-printable ones replaced, for error messages that quote input:
    a hostile record must not make an output (or a log line) as large as itself."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _check_schema(headers: Headers | None, expected: str) -> None:
    found = schema_of(headers)
    if found == expected or (
        found in _EARLIER_READABLE and found.split("/")[0] == expected.split("/", maxsplit=1)[0]
    ):
        return
    if found is None:
        raise DecodeError(f"record has no {SCHEMA_HEADER!r} header; expected {expected}")
    if found.split("/")[0] == expected.split("/", maxsplit=1)[0]:
        raise SchemaVersionError(f"record has schema {bounded(found)!r}; this reader understands {expected}")
    raise DecodeError(f"record has schema {bounded(found)!r}; expected {expected}")


def encode_image(event: ImageEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """An image event as (key, value, headers): keyed by job id, so jobs spread over the partitions."""
    headers = [(SCHEMA_HEADER, IMAGE_SCHEMA.encode()), ("meta", event.meta.model_dump_json().encode())]
    return event.meta.job_id.encode(), event.image, headers


def decode_image(value: bytes | None, headers: Headers | None) -> ImageEvent:
    """Read an image record back; `DecodeError` if it is not one."""
    _check_schema(headers, IMAGE_SCHEMA)
    raw_meta = header(headers, "meta")
    if raw_meta is None:
        raise DecodeError("image record has no 'meta' header")
    try:
        meta = ImageMeta.model_validate_json(raw_meta)
    except ValidationError as e:
        raise DecodeError(f"image record has invalid metadata: {e.error_count()} error(s)") from e
    if not value:
        raise DecodeError(f"image record for job {meta.job_id} has no image bytes")
    return ImageEvent(meta=meta, image=value)


_T = TypeVar("_T", PredictionEvent, FeedbackEvent)


def _encode_json(
    event: _Event, schema: str, key: str | None
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    return (
        (key.encode() if key else None),
        event.model_dump_json().encode(),
        [(SCHEMA_HEADER, schema.encode())],
    )


def _decode_json(value: bytes | None, headers: Headers | None, model: type[_T], schema: str) -> _T:
    _check_schema(headers, schema)
    try:
        return model.model_validate_json(value or b"")
    except ValidationError as e:
        raise DecodeError(f"{schema} record is invalid: {bounded(str(e), 300)}") from e


def encode_prediction(event: PredictionEvent) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A prediction as (key, value, headers), keyed by job id."""
    return _encode_json(event, PREDICTION_SCHEMA, event.job_id)


def decode_prediction(value: bytes | None, headers: Headers | None) -> PredictionEvent:
    """Read a prediction record back; `DecodeError` if it is not one."""
    return _decode_json(value, headers, PredictionEvent, PREDICTION_SCHEMA)


def encode_feedback(event: FeedbackEvent) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A feedback report as (key, value, headers), keyed by job id when it names one."""
    return _encode_json(event, FEEDBACK_SCHEMA, event.job_id)


def decode_feedback(value: bytes | None, headers: Headers | None) -> FeedbackEvent:
    """Read a feedback record back; `DecodeError` if it is not one."""
    return _decode_json(value, headers, FeedbackEvent, FEEDBACK_SCHEMA)


V = TypeVar("V")
W = TypeVar("W")


@dataclass(frozen=True, slots=True)
class Record(Generic[V]):
    """A value with the Kafka coordinates it came from, so every log line can name them: raw bytes as polled
    (`RawRecord`), or the event a topic's decoder made of them."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: V
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def replace_value(self, value: W) -> Record[W]:
        """The same record carrying `value` (its decoded event) instead."""
        return Record(self.topic, self.partition, self.offset, self.key, value, self.headers)

    @property
    def where(self) -> str:
        """`topic[partition]@offset`, for log lines."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


RawRecord = Record[bytes | None]
