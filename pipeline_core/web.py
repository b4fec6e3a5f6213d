"""What the two web services (producer_api, results_sink) share: API-key check, CORS, metrics, errors.

Only the web services import this module (it needs FastAPI); the inference consumer never does.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from pipeline_core.settings import WebSettings

API_KEY_HEADER = "X-API-Key"


def api_key_guard(settings: WebSettings) -> Callable[[Request], None]:
    """A dependency that refuses requests without the configured API key (none configured: all pass)."""
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        # Browsers' EventSource cannot send headers, so SSE clients may pass the key as `?api_key=`.
        given = request.headers.get(API_KEY_HEADER) or request.query_params.get("api_key") or ""
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, detail=f"missing or wrong {API_KEY_HEADER} header")

    return check


def install_common(app: FastAPI, settings: WebSettings) -> None:
    """CORS for the configured origins, JSON errors everywhere, and `GET /metrics` for Prometheus."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=[API_KEY_HEADER, "Last-Event-ID", "Content-Type"],
    )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        body: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {"error": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
