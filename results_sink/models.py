"""HTTP response models of the sink: what clients see, kept apart from the Kafka event models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

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


class ResultResponse(BaseModel):
    """A finished job: `GET /v1/results/{id}` and the data of every SSE `result` event."""

    id: str
    status: Literal["done", "failed"]
    filename: str
    label: str | None
    score: float | None
    top: list[TopLabel]
    error: str | None
    model: ModelInfo
    timings: ResultTimings

    @classmethod
    def from_stored(cls, stored: StoredResult) -> ResultResponse:
        """The client's view of a stored prediction."""
        e = stored.event
        timings = e.timings.model_dump() if e.timings is not None else {}
        return cls(
            id=e.job_id,
            status=e.status,
            filename=e.filename,
            label=e.label,
            score=e.score,
            top=[TopLabel(label=t.label, wnid=t.wnid, index=t.index, score=t.score) for t in e.top],
            error=e.error,
            model=ModelInfo(name=e.model_name, version=e.model_version, runtime=e.runtime),
            timings=ResultTimings(**timings, stored_at=stored.stored_at),
        )


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
