"""HTTP response models of the sink: what clients see, kept apart from the Kafka event models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from pipeline_core.tracing import trace_id_of
from results_sink.store import StoredResult


class TopLabel(BaseModel):
    label: str
    wnid: str | None
    index: int
    score: float


class ModelInfo(BaseModel):
    name: str | None
    version: str | None
    runtime: str | None


class ResultTimings(BaseModel):
    """The prediction's hop-by-hop timings (null when the producer sent none) and when the sink stored it."""

    received_at: float | None = None
    dequeued_at: float | None = None
    predicted_at: float | None = None
    preprocess_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None
    stored_at: float


class Answer(BaseModel):
    """One model's answer for an image, as clients see it."""

    status: Literal["done", "failed"]
    label: str | None
    score: float | None
    top: list[TopLabel]
    error: str | None
    model: ModelInfo
    timings: ResultTimings
    trace_id: str | None = Field(
        None,
        description="The OpenTelemetry trace of this image, from its upload to this answer (32 hex digits; "
        "null when nothing traced it): what a tracing UI finds it by.",
    )


class ShadowResult(Answer):
    """A shadow model's answer for the same image: stored and compared, never sent to a stream."""

    @classmethod
    def from_stored(cls, stored: StoredResult) -> ShadowResult:
        """The client's view of a shadow model's stored prediction."""
        return cls(**_answer(stored))


class ResultResponse(Answer):
    """A finished job: `GET /v1/results/{id}` and the data of every SSE `result` event.

    `shadow` is the shadow model's answer when one runs and its answer is in (`GET` only; SSE events are sent as
    soon as the primary's result is stored, and carry null).
    """

    id: str
    filename: str
    shadow: ShadowResult | None = None

    @classmethod
    def from_stored(cls, stored: StoredResult, shadow: StoredResult | None = None) -> ResultResponse:
        """The client's view of a stored prediction (and of the shadow model's, if given)."""
        return cls(
            id=stored.event.job_id,
            filename=stored.event.filename,
            shadow=ShadowResult.from_stored(shadow) if shadow is not None else None,
            **_answer(stored),
        )


def _answer(stored: StoredResult) -> dict[str, Any]:
    e = stored.event
    timings = e.timings.model_dump() if e.timings is not None else {}
    return {
        "status": e.status,
        "label": e.label,
        "score": e.score,
        "top": [TopLabel(label=t.label, wnid=t.wnid, index=t.index, score=t.score) for t in e.top],
        "error": e.error,
        "model": ModelInfo(name=e.model_name, version=e.model_version, runtime=e.runtime),
        "timings": ResultTimings(**timings, stored_at=stored.stored_at),
        "trace_id": trace_id_of(e.traceparent),
    }


class Percentiles(BaseModel):
    """Milliseconds; null when the window holds no measurement."""

    p50: float | None
    p99: float | None


class ModelReport(BaseModel):
    """One model's answers in the comparison window (`GET /v1/models`)."""

    role: Literal["primary", "shadow"]
    model: ModelInfo
    images: int
    failures: int
    compared: int = Field(description="Images this model and the primary both classified (status done).")
    top1_agreement: float | None = Field(
        description="Share of the compared images whose top label is the primary's (null: none compared; the "
        "primary's own is 1 by definition and reported null)."
    )
    inference_ms: Percentiles = Field(description="The model call of the image's batch.")
    round_trip_ms: Percentiles = Field(
        description="From the API's receipt of the upload to this result stored."
    )


class ModelsResponse(BaseModel):
    """How each model does on live traffic: the newest `window` results of each role."""

    window: int
    models: list[ModelReport]


class PendingResponse(BaseModel):
    """A job the API issued whose result is not stored yet (HTTP 202)."""

    id: str
    status: Literal["pending"] = "pending"


class ErrorResponse(BaseModel):
    error: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = None
