"""The upload API proper: POST /v1/images, and the health checks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pipeline_core.web import RETRY_AFTER_DOC, api_key_guard, key_refusals
from producer_api import metrics
from producer_api.deps import ServicesDep
from producer_api.models import ErrorBody, JobsAccepted, ReadyBody
from producer_api.settings import ApiSettings
from producer_api.uploads import receive_images, to_events, to_job

# What the bytes of a file part must be: a schema cannot say it, so the description does.
IMAGE_BYTES = "An image's bytes: JPEG, PNG, GIF, WebP, BMP or TIFF (ACCEPTED_FORMATS), judged from the bytes."


def image_files(max_files: int) -> dict[str, Any]:
    """The request body of POST /v1/images: 1 to `max_files` parts named `file`."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": max_files,
                                "items": {"type": "string", "format": "binary", "description": IMAGE_BYTES},
                            }
                        },
                    }
                }
            },
        }
    }


def upload_errors(settings: ApiSettings) -> dict[int | str, dict[str, Any]]:
    """Every error answer of POST /v1/images."""
    return {
        400: {
            "model": ErrorBody,
            "description": "No file, a file that is no accepted image, or a malformed form or charset.",
        },
        **key_refusals(settings),
        413: {"model": ErrorBody, "description": "A file or the body is too large, or too many files."},
        429: {
            "model": ErrorBody,
            "description": "Too many images wait for a consumer; retry after `Retry-After`.",
            "headers": RETRY_AFTER_DOC,
        },
        503: {
            "model": ErrorBody,
            "description": "Kafka is unavailable; retry after `Retry-After` seconds.",
            "headers": RETRY_AFTER_DOC,
        },
    }


def create_router(settings: ApiSettings) -> APIRouter:
    """The v1 routes (behind the API key when one is set) and the open health checks."""
    router = APIRouter()
    guarded = [Depends(api_key_guard(settings))]

    @router.post(
        "/v1/images",
        status_code=202,
        response_model=JobsAccepted,
        dependencies=guarded,
        openapi_extra=image_files(settings.max_files_per_request),
        responses=upload_errors(settings),
        summary="Upload one or more images for classification",
    )
    async def upload_images(request: Request, services: ServicesDep) -> JobsAccepted:
        """Validate every file, publish one event per file, answer once the broker acknowledged them all."""
        services.admission.check(1)  # before reading the body: shedding must cost next to nothing
        uploads = await receive_images(request, services, services.settings.max_files_per_request)
        services.admission.check(len(uploads))
        events = to_events(uploads, services.settings)
        await services.publisher.publish(events)
        services.admission.admitted(len(events))
        metrics.UPLOADS.inc(len(uploads))
        for upload in uploads:
            metrics.UPLOAD_BYTES.observe(len(upload.data))
        return JobsAccepted(jobs=[to_job(event, services.settings) for event in events])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        """Always 200 while the process serves requests."""
        return {"status": "ok"}

    @router.get(
        "/readyz", response_model=ReadyBody, responses={503: {"model": ReadyBody}}, summary="Readiness"
    )
    async def readyz(services: ServicesDep) -> JSONResponse:
        """200 when Kafka answers (checked at most once a second), 503 with the reason otherwise."""
        state = await services.publisher.readiness()
        body = ReadyBody(ready=state.ok, reason=state.reason).model_dump()
        return JSONResponse(body, status_code=200 if state.ok else 503)

    return router
