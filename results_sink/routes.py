"""The sink's HTTP routes: results as JSON, results as server-sent events, health and readiness."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from pipeline_core.jobs import is_issued_job_id
from pipeline_core.web import RETRY_AFTER_DOC, api_key_guard, key_refusals
from results_sink.capacity import StreamSlots, client_key
from results_sink.comparison import models_report
from results_sink.deps import ConsumerDep, HubDep, LastEventIdDep, SettingsDep, StoreDep
from results_sink.models import (
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
    PendingResponse,
    ReadyResponse,
    ResultResponse,
)
from results_sink.settings import SinkSettings
from results_sink.streams import StreamRequest, stream_response

MODELS_REPORT_TTL_S = 1.0
_NOT_ISSUED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Not a job id this system's API issued"}
}


def _stream_responses(settings: SinkSettings, bad_request: str) -> dict[int | str, dict[str, Any]]:
    """What a stream route answers: the stream, 204, and its refusals (`bad_request`: what gets a 400)."""
    return {
        200: {"content": {"text/event-stream": {}}, "description": "`result` events, then the stream ends"},
        204: {
            "description": "Everything was sent already (Last-Event-ID); an EventSource stops reconnecting"
        },
        400: {"model": ErrorResponse, "description": bad_request},
        **key_refusals(settings),
        **_NOT_ISSUED,
        429: {
            "model": ErrorResponse,
            "description": "This client has its most streams open; `Retry-After`",
            "headers": RETRY_AFTER_DOC,
        },
        503: {
            "model": ErrorResponse,
            "description": "This instance has its most streams open; `Retry-After`",
            "headers": RETRY_AFTER_DOC,
        },
    }


def _ids_parameter(limit: int) -> dict[str, Any]:
    """`?ids=` as `_parse_ids` reads it: 1 to `limit` comma-separated ids, each with a non-space character
    (read from the query by the route itself, so that a missing or empty list is the route's 400)."""
    item = r"[^,]*\S[^,]*"
    return {
        "parameters": [
            {
                "name": "ids",
                "in": "query",
                "required": True,
                "description": f"Comma-separated job ids, 1 to {limit} (MAX_IDS_PER_STREAM)",
                "schema": {"type": "string", "pattern": f"^{item}(,{item}){{0,{limit - 1}}}$"},
            }
        ]
    }


def _parse_ids(raw: str, limit: int) -> list[str]:
    """The comma-separated ids of `?ids=`, de-duplicated in order; 400 when empty or too many."""
    ids = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not ids:
        raise HTTPException(400, detail=f"ids: give 1 to {limit} comma-separated job ids")
    if len(ids) > limit:
        raise HTTPException(400, detail=f"ids: {len(ids)} job ids given; one stream watches at most {limit}")
    return ids


def _check_issued(job_ids: list[str], settings: SinkSettings) -> None:
    """404 unless the API issued every id, checked by signature alone: the store is not read for made-up ids."""
    unknown = [i for i in job_ids if not is_issued_job_id(i, settings.job_id_key)]
    if len(job_ids) == 1 and unknown:
        raise HTTPException(404, detail="unknown job id: not one this system's API issued")
    if unknown:
        shown = ", ".join(repr(i[:40]) for i in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise HTTPException(404, detail=f"unknown job ids: {shown}{more}")


def create_router(settings: SinkSettings) -> APIRouter:
    """The results routes, behind the API-key check when one is configured (the streams also take
    `?api_key=`, which a browser's EventSource needs), and the streams' caps."""
    router = APIRouter(prefix="/v1")
    header_key = [Depends(api_key_guard(settings))]
    header_or_query_key = [Depends(api_key_guard(settings, query_allowed=True))]
    slots = StreamSlots(settings.max_sse_connections, settings.max_sse_streams_per_client)

    @router.get(
        "/results/{job_id}",
        response_model=ResultResponse,
        dependencies=header_key,
        responses={202: {"model": PendingResponse, "description": "Issued, no result stored yet"}}
        | key_refusals(settings)
        | _NOT_ISSUED,
    )
    def get_result(job_id: str, store: StoreDep, s: SettingsDep) -> ResultResponse | JSONResponse:
        """One job's result (200), pending (202) or unknown (404)."""
        _check_issued([job_id], s)
        stored = store.get(job_id)
        if stored is not None:
            return ResultResponse.from_stored(stored, store.get_shadow(job_id))
        return JSONResponse(PendingResponse(id=job_id).model_dump(), status_code=202)

    report_lock = threading.Lock()
    report: list[tuple[float, ModelsResponse]] = []

    @router.get(
        "/models", response_model=ModelsResponse, dependencies=header_key, responses=key_refusals(settings)
    )
    def get_models(store: StoreDep) -> ModelsResponse:
        """Each model on live traffic (the primary, and a shadow model when one runs): images, failures, top-1
        agreement with the primary, inference and round-trip latency, over the newest results of each."""
        # Read at most once a second however often it is asked: two queries of a thousand rows each.
        with report_lock:
            if not report or time.monotonic() - report[0][0] > MODELS_REPORT_TTL_S:
                report[:] = [(time.monotonic(), models_report(store))]
            return report[0][1]

    @router.get(
        "/results/{job_id}/events",
        response_class=Response,
        dependencies=header_or_query_key,
        responses=_stream_responses(settings, "Last-Event-ID is not an event id this sink sent"),
    )
    async def job_events(
        request: Request, job_id: str, *, after: LastEventIdDep, store: StoreDep, hub: HubDep, s: SettingsDep
    ) -> Response:
        """One `result` event as soon as the job's result is stored (at once if it is), then the end."""
        _check_issued([job_id], s)
        stored = await run_in_threadpool(store.get, job_id)
        if stored is not None and stored.seq <= after:
            return Response(status_code=204)
        release = slots.acquire(client_key(request))
        return stream_response(StreamRequest([job_id], after), hub, store, s, on_close=release)

    @router.get(
        "/events",
        response_class=Response,
        dependencies=header_or_query_key,
        responses=_stream_responses(
            settings, "No ids, too many, or a Last-Event-ID that is not an event id this sink sent"
        ),
        openapi_extra=_ids_parameter(settings.max_ids_per_stream),
    )
    async def many_events(
        request: Request, *, after: LastEventIdDep, store: StoreDep, hub: HubDep, s: SettingsDep
    ) -> Response:
        """Each job's `result` as it is stored (stored ones first, in seq order), then the end."""
        job_ids = _parse_ids(request.query_params.get("ids", ""), s.max_ids_per_stream)
        _check_issued(job_ids, s)
        stored = await run_in_threadpool(store.results_after, job_ids, 0)
        if len(stored) == len(job_ids) and all(r.seq <= after for r in stored):
            return Response(status_code=204)
        release = slots.acquire(client_key(request))
        return stream_response(StreamRequest(job_ids, after), hub, store, s, on_close=release)

    return router


health = APIRouter()


@health.get("/healthz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
def healthz(consumer: ConsumerDep) -> HealthResponse | JSONResponse:
    """200 while the process works; 503 once its consumer loop has died (it is about to exit)."""
    if consumer.failure is not None:
        return JSONResponse({"error": f"consumer loop died: {consumer.failure}"}, status_code=503)
    return HealthResponse()


@health.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
def readyz(consumer: ConsumerDep) -> ReadyResponse | JSONResponse:
    """200 when the consumer works (has partitions, or polled recently), else 503 with the reason."""
    reason = consumer.not_ready_reason()
    if reason is None:
        return ReadyResponse(status="ready")
    return JSONResponse(ReadyResponse(status="not ready", reason=reason).model_dump(), status_code=503)
