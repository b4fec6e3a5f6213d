"""Request and response bodies of the HTTP API (the Kafka events live in pipeline_core.events)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Job(BaseModel):
    """One accepted image and where to find its result."""

    id: str = Field(description="The job id: unguessable and signed.")
    filename: str = Field(
        description="The upload's file name, sanitised (no directories, no control characters)."
    )
    result_url: str = Field(description="GET it for the result (202 while pending, 200 when done).")
    events_url: str = Field(description="Server-sent events: one `result` event when the job is done.")


class JobsAccepted(BaseModel):
    """202 answer to POST /v1/images: one job per file, in the order the files were sent."""

    jobs: list[Job]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of /v1/images; `filename` names the refused file, when one is to blame."""

    error: str = Field(description="A short, stable code, e.g. `unsupported_format`.")
    filename: str | None = None
    reason: str = Field(description="A sentence for people.")


class PredictBody(BaseModel):
    """POST /predict's answer, exactly as the original project's: three keys, always."""

    success: bool
    prediction: str | None = None
    score: float | None = None


class FeedbackAccepted(BaseModel):
    """POST /feedback's answer."""

    success: bool = True


class FeedbackRefused(BaseModel):
    """POST /feedback's 4xx/503 answer."""

    success: bool = False
    error: str = Field(description="A short, stable code, e.g. `unknown_job`.")
    reason: str = Field(description="A sentence for people.")


class ReadyBody(BaseModel):
    """GET /readyz's answer."""

    ready: bool
    reason: str
