"""`create_app(settings)`: the FastAPI app; its lifespan starts the Kafka publisher and results client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from pipeline_core.errors import PublishError
from pipeline_core.web import install_common, telemetry
from producer_api import metrics
from producer_api.admission import Admission, OverloadedError
from producer_api.compat import RETRY_AFTER, create_compat_router
from producer_api.deps import Services
from producer_api.models import ErrorBody
from producer_api.pages import Page
from producer_api.publisher import Publisher
from producer_api.results import ResultWaiter
from producer_api.routes import create_router
from producer_api.settings import ApiSettings
from producer_api.validation import UploadRejected, ValidationPool

logger = logging.getLogger(__name__)


def create_app(settings: ApiSettings, *, sink_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The upload API. `sink_transport` replaces the network to the results sink (tests only)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waiter = ResultWaiter(settings, sink_transport)
        publisher = Publisher(settings)
        admission = Admission(settings)
        validator = ValidationPool(settings.validation_threads)
        app.state.services = Services(settings, publisher, waiter, Page(), admission, validator)
        try:
            await publisher.start()
            admission.start()
            yield
        finally:
            validator.close()
            await admission.stop()
            await publisher.stop()
            await waiter.aclose()

    app = FastAPI(
        title="Image classification: upload API",
        summary="Upload images; each becomes a Kafka event; results arrive from the results sink.",
        version="1.0.0",
        lifespan=lifespan,
        telemetry=telemetry(),
    )
    install_common(app, settings)
    _install_error_handlers(app)
    app.include_router(create_router(settings))
    app.include_router(create_compat_router(settings))
    app.mount("/static", StaticFiles(packages=[("producer_api", "static")]), name="static")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadRejected)
    async def rejected(_request: Request, exc: UploadRejected) -> JSONResponse:
        metrics.UPLOADS_REJECTED.labels(exc.error).inc()
        body = ErrorBody(error=exc.error, filename=exc.filename, reason=exc.reason)
        return JSONResponse(body.model_dump(), status_code=exc.status)

    @app.exception_handler(OverloadedError)
    async def overloaded(_request: Request, exc: OverloadedError) -> JSONResponse:
        body = ErrorBody(error="overloaded", reason=str(exc))
        return JSONResponse(
            body.model_dump(), status_code=429, headers={"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(PublishError)
    async def unavailable(_request: Request, exc: PublishError) -> JSONResponse:
        logger.warning("upload refused, Kafka unavailable: %s", exc)
        metrics.UPLOADS_REJECTED.labels("broker_unavailable").inc()
        body = ErrorBody(error="broker_unavailable", reason=f"Kafka is unavailable: {exc}; retry later")
        return JSONResponse(body.model_dump(), status_code=503, headers=RETRY_AFTER)
