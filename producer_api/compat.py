"""The original project's routes, kept compatible: GET/POST /, POST /predict, GET/POST /feedback."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline_core.errors import PublishError
from pipeline_core.events import FeedbackEvent
from pipeline_core.jobs import is_issued_job_id
from pipeline_core.web import CSP_HEADER, RETRY_AFTER_DOC, api_key_guard, key_refusals, origin_of, page_csp
from producer_api import metrics
from producer_api.admission import OverloadedError
from producer_api.deps import Services, ServicesDep
from producer_api.forms import form_charset
from producer_api.models import FeedbackAccepted, FeedbackRefused, PredictBody
from producer_api.pages import PageResult
from producer_api.results import ResultTimeoutError, ResultUnavailableError
from producer_api.routes import IMAGE_BYTES
from producer_api.settings import ApiSettings
from producer_api.uploads import check_content_length, limit_body, receive_images, to_events
from producer_api.validation import UploadRejected

logger = logging.getLogger(__name__)

FEEDBACK_MAX_BODY = 64 * 1024
FEEDBACK_MAX_REPORT: int = FeedbackEvent.model_json_schema()["properties"]["report"]["maxLength"]
BROKER_RETRY_AFTER_S = 5  # a broker that is down: a guess, unlike the backlog's estimate
RETRY_AFTER = {"Retry-After": str(BROKER_RETRY_AFTER_S)}


def _single_file(*, required: bool) -> dict[str, Any]:
    """A multipart body with one image part named `file`; POST / takes none too (302 back to the page)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary", "description": IMAGE_BYTES}},
    }
    if required:
        schema["required"] = ["file"]
    return {"requestBody": {"required": required, "content": {"multipart/form-data": {"schema": schema}}}}


# What /predict and POST / answer besides a label: the status of `Classified`, and why.
_CLASSIFY_ERRORS = {
    400: "No file, a file that is no accepted image, a malformed form, or the image could not be classified.",
    413: "The file or the body is too large, or more than one file.",
    429: "Too many images wait for a consumer; retry after `Retry-After`.",
    502: "The results sink refused to stream the result.",
    503: "Kafka is unavailable; retry after `Retry-After`.",
    504: "No result within PREDICT_TIMEOUT_S.",
}
_RETRY_LATER = (429, 503)
_FEEDBACK_FORM = {
    "type": "object",
    "properties": {
        "report": {
            "type": "string",
            "maxLength": FEEDBACK_MAX_REPORT,
            "description": "What is wrong; an empty report is accepted and dropped.",
        },
        "job_id": {"type": "string", "description": "The job the report is about: an id this API issued."},
    },
}


def _predict_responses(settings: ApiSettings) -> dict[int | str, dict[str, Any]]:
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": PredictBody, "description": f"`success: false`. {why}"}
        | ({"headers": RETRY_AFTER_DOC} if status in _RETRY_LATER else {})
        for status, why in _CLASSIFY_ERRORS.items()
    }
    return errors | key_refusals(settings)


def _page_responses(settings: ApiSettings) -> dict[int | str, dict[str, Any]]:
    page: dict[str, Any] = {"text/html": {"schema": {"type": "string"}}}
    errors: dict[int | str, dict[str, Any]] = {
        status: {"description": f"The page, with the reason. {why}", "content": page}
        | ({"headers": RETRY_AFTER_DOC} if status in _RETRY_LATER else {})
        for status, why in _CLASSIFY_ERRORS.items()
    }
    redirect: dict[str, Any] = {
        "description": "No file was chosen: back to the page.",
        "headers": {"Location": {"required": True, "schema": {"type": "string", "const": "/"}}},
    }
    # The page is HTML, but a refused key is answered in JSON like everywhere else.
    refusals: dict[int | str, dict[str, Any]] = {
        status: {
            "description": r["description"],
            "content": {"application/json": {"schema": r["model"].model_json_schema()}},
        }
        for status, r in key_refusals(settings).items()
    }
    return {200: {"content": page}, 302: redirect} | errors | refusals


def _feedback_responses(settings: ApiSettings) -> dict[int | str, dict[str, Any]]:
    return {
        400: {
            "model": FeedbackRefused,
            "description": "`job_id` is not a job this API issued, too long a report, or a malformed form.",
        },
        **key_refusals(settings),
        413: {"model": FeedbackRefused, "description": f"The body is over {FEEDBACK_MAX_BODY} bytes."},
        503: {
            "model": FeedbackRefused,
            "description": "Kafka is unavailable; retry after `Retry-After`.",
            "headers": RETRY_AFTER_DOC,
        },
    }


@dataclass(frozen=True, slots=True)
class Classified:
    """One image's outcome on a waiting route: an HTTP status and what to show."""

    status: int
    filename: str
    label: str | None = None
    score: float | None = None
    error: str | None = None
    reason: str | None = None
    retry_after_s: int | None = None  # set on 429/503: when the client should try again

    @property
    def headers(self) -> dict[str, str] | None:
        """`Retry-After` when the outcome asks the client to come back later."""
        return None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


async def classify_one(request: Request, services: Services) -> Classified:
    """Publish the request's one image and wait for its result; every failure becomes a status and reason."""
    settings = services.settings
    try:
        uploads = await receive_images(request, services, max_files=1)
    except UploadRejected as e:
        metrics.UPLOADS_REJECTED.labels(e.error).inc()
        return Classified(e.status, e.filename or "", error=e.error, reason=e.reason)
    try:
        services.admission.check(1)
    except OverloadedError as e:
        return Classified(
            429, uploads[0].filename, error="overloaded", reason=str(e), retry_after_s=e.retry_after_s
        )
    events = to_events(uploads, settings)
    started = time.perf_counter()
    try:
        await services.publisher.publish(events)
        services.admission.admitted(1)
        metrics.UPLOADS.inc()
        metrics.UPLOAD_BYTES.observe(len(uploads[0].data))
        result = await services.waiter.wait(events[0].meta.job_id, settings.predict_timeout_s)
    except PublishError as e:
        return Classified(
            503,
            uploads[0].filename,
            error="broker_unavailable",
            reason=f"Kafka is unavailable: {e}",
            retry_after_s=BROKER_RETRY_AFTER_S,
        )
    except ResultTimeoutError as e:
        return Classified(504, uploads[0].filename, error="result_timeout", reason=str(e))
    except ResultUnavailableError as e:
        return Classified(502, uploads[0].filename, error="results_unavailable", reason=str(e))
    metrics.PREDICT_ROUNDTRIP_SECONDS.observe(time.perf_counter() - started)
    return _from_result(result, uploads[0].filename)


def _from_result(result: dict[str, Any], filename: str) -> Classified:
    if result.get("status") != "done" or result.get("label") is None:
        reason = str(result.get("error") or "the image could not be classified")
        return Classified(400, filename, error="classification_failed", reason=reason)
    score = result.get("score")
    return Classified(
        200, filename, label=str(result["label"]), score=round(float(score), 4) if score is not None else None
    )


def create_compat_router(settings: ApiSettings) -> APIRouter:
    """The compatibility routes; uploads and feedback sit behind the API key when one is set."""
    router = APIRouter(tags=["compatibility"])
    guarded = [Depends(api_key_guard(settings))]

    # The page reads results from the sink, another origin: its policy must let it connect there.
    page_headers = {CSP_HEADER: page_csp([origin_of(settings.results_public_url)])}

    @router.get("/", response_class=HTMLResponse, summary="The upload page")
    async def page(services: ServicesDep) -> HTMLResponse:
        """The upload page: choose or drop photos, watch their labels arrive."""
        return HTMLResponse(services.page.render(), headers=page_headers)

    @router.post(
        "/",
        response_class=HTMLResponse,
        dependencies=guarded,
        openapi_extra=_single_file(required=False),
        responses=_page_responses(settings),
        summary="Classify one image and show the page with its result (no JavaScript needed)",
    )
    async def page_upload(request: Request, services: ServicesDep) -> Response:
        """No file: 302 back to the page, as the original did; otherwise the page with the result."""
        outcome = await classify_one(request, services)
        if outcome.error == "no_file":
            return RedirectResponse("/", status_code=302)
        shown = PageResult(outcome.filename, outcome.label, outcome.score, outcome.reason)
        headers = page_headers | (outcome.headers or {})
        return HTMLResponse(services.page.render(shown), status_code=outcome.status, headers=headers)

    @router.post(
        "/predict",
        response_model=PredictBody,
        dependencies=guarded,
        openapi_extra=_single_file(required=True),
        responses=_predict_responses(settings),
        summary="Classify one image and wait for the label (the original project's API)",
    )
    async def predict(request: Request, services: ServicesDep) -> JSONResponse:
        """`{"success", "prediction", "score"}`: 200, or 400/413/429/502/503/504 with false/null/null."""
        outcome = await classify_one(request, services)
        if outcome.status != 200:
            if outcome.status >= 500:
                logger.warning("/predict answered %d: %s", outcome.status, outcome.reason)
            body = PredictBody(success=False).model_dump()
            return JSONResponse(body, status_code=outcome.status, headers=outcome.headers)
        return JSONResponse(
            PredictBody(success=True, prediction=outcome.label, score=outcome.score).model_dump()
        )

    @router.get("/feedback", response_model=FeedbackAccepted, summary="Does nothing; 200 as in the original")
    async def feedback_page() -> FeedbackAccepted:
        """The original answered 200 to GET too."""
        return FeedbackAccepted()

    @router.post(
        "/feedback",
        response_model=FeedbackAccepted,
        dependencies=guarded,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/x-www-form-urlencoded": {"schema": _FEEDBACK_FORM},
                    "multipart/form-data": {"schema": _FEEDBACK_FORM},
                }
            }
        },
        responses=_feedback_responses(settings),
        summary="Report a wrong label (form fields `report`, optional `job_id`)",
    )
    async def feedback(request: Request, services: ServicesDep) -> JSONResponse:
        """Publish a non-empty report to the feedback topic; an empty one is accepted and dropped."""
        try:
            event = await _feedback_event(request, services.settings)
            if event is not None:
                await services.publisher.publish([event])
        except UploadRejected as e:
            return JSONResponse(
                {"success": False, "error": e.error, "reason": e.reason}, status_code=e.status
            )
        except PublishError as e:
            body = {"success": False, "error": "broker_unavailable", "reason": str(e)}
            return JSONResponse(body, status_code=503, headers=RETRY_AFTER)
        return JSONResponse(FeedbackAccepted().model_dump())

    return router


async def _feedback_event(request: Request, settings: ApiSettings) -> FeedbackEvent | None:
    check_content_length(request, FEEDBACK_MAX_BODY)
    # Checked here too: Starlette's parser fails with a 500 on some charsets (`undefined`).
    form_charset(request.headers.get("content-type"))
    bounded = limit_body(request, FEEDBACK_MAX_BODY)
    try:
        form = await bounded.form(max_files=0, max_fields=8, max_part_size=FEEDBACK_MAX_BODY)
    except StarletteHTTPException as e:  # Starlette's 400 for a malformed form, with a body of its own
        raise UploadRejected(e.status_code, "invalid_form", str(e.detail)) from e
    report, job_id = form.get("report"), form.get("job_id") or None
    if not isinstance(report, str) or not report.strip():
        return None
    if job_id is not None and not (isinstance(job_id, str) and is_issued_job_id(job_id, settings.job_id_key)):
        raise UploadRejected(400, "unknown_job", "job_id is not a job this service issued")
    try:
        return FeedbackEvent(report=report, job_id=job_id, received_at=time.time())
    except ValidationError as e:
        raise UploadRejected(400, "invalid_feedback", f"{e.error_count()} invalid field(s)") from e
