"""What the two web services (producer_api, results_sink) share: API-key check, CORS, security headers, docs,
metrics, errors, and an access log that never shows a key.

Only the web services import this module (it needs FastAPI); the inference consumer never does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import fastapi.routing
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.dependencies.utils import get_flat_params
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, APIKeyQuery
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline_core import tracing
from pipeline_core.serving import RequestGuard, ServingLimits
from pipeline_core.settings import WebSettings

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_PARAM = "api_key"
CSP_HEADER = "Content-Security-Policy"
DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"
LIVENESS_PATH = "/healthz"

# Every response that sets no policy of its own (JSON, event streams, files) may load nothing and be framed
# nowhere: nothing the services answer besides their pages is meant to be rendered by a browser.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = (
    (CSP_HEADER, DEFAULT_CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# A `name=value` pair of a query string inside a log line: after `?` or `&`, up to the next separator.
_QUERY_PAIR = re.compile(r"(?<=[?&])([^=&\s\"'#]*)=([^&\s\"'#]*)")
SECRET_QUERY_PARAMS = frozenset({API_KEY_PARAM})
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


class KeyRefused(BaseModel):
    """The 401 of a guarded route: no API key, a wrong one, or one in the URL where only the header counts."""

    error: str = Field(description="What was wrong with the key, never the key itself.")


def key_refusals(settings: WebSettings) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry of a guarded route's 401: there only when an API key is configured."""
    if settings.api_key is None:
        return {}
    return {401: {"model": KeyRefused, "description": f"{API_KEY_HEADER} missing or wrong."}}


# The `headers` of a documented 429 or 503 answer: every one says when to come back.
RETRY_AFTER_DOC: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
_HEADER_KEY = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name="apiKeyHeader", auto_error=False, description="The API_KEY setting."
)
_QUERY_KEY = APIKeyQuery(
    name=API_KEY_PARAM,
    scheme_name="apiKeyQuery",
    auto_error=False,
    description="The API_KEY setting, on the event-stream routes only (a browser's EventSource sends no headers).",
)


def api_key_guard(settings: WebSettings, *, query_allowed: bool = False) -> Callable[..., None]:
    """A dependency that refuses requests without the configured API key (none configured: all pass).

    `query_allowed` also takes the key as `?api_key=`, for the event streams only: a browser's EventSource
    cannot send headers. Anywhere else a key in the URL is refused, so that clients keep it out of URLs.
    With a key configured, the routes' OpenAPI operations name the header (and the query) as their security.
    """
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None
    if expected is None:

        def open_to_all() -> None:
            return None

        return open_to_all

    def check(request: Request) -> None:
        given = request.headers.get(API_KEY_HEADER)
        if API_KEY_PARAM in request.query_params:
            if not query_allowed:
                raise HTTPException(
                    401,
                    detail=f"?{API_KEY_PARAM}= is accepted only on the event-stream routes; "
                    f"send the key in the {API_KEY_HEADER} header",
                )
            given = given or request.query_params[API_KEY_PARAM]
        if not hmac.compare_digest((given or "").encode(), expected):
            raise HTTPException(401, detail=f"missing or wrong {API_KEY_HEADER} header")

    # The schemes' values are read by `check` from the request: the parameters only document them.
    def header_only(request: Request, _h: str | None = Security(_HEADER_KEY)) -> None:
        check(request)

    def header_or_query(
        request: Request, _h: str | None = Security(_HEADER_KEY), _q: str | None = Security(_QUERY_KEY)
    ) -> None:
        check(request)

    return header_or_query if query_allowed else header_only


# Requests that are not work: probes and scrapes would only bury the traces that matter.
UNTRACED_PATHS = frozenset({LIVENESS_PATH, "/readyz", "/metrics"})


def telemetry() -> TelemetryConfig:
    """FastAPI's own OpenTelemetry (`FastAPI(telemetry=...)`): a server span per request, continuing the client's
    `traceparent`, current while the route runs, so that what the upload publishes is part of its trace; on the
    pipeline's tracer provider (`pipeline_core.tracing`). Spans only: no OpenTelemetry metrics (Prometheus has
    them) or logs, nor a span per dependency."""
    return {
        # None when tracing is off: FastAPI then sees an unconfigured global provider and skips its work.
        "tracer_provider": tracing.installed_provider(),
        "tracing": True,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS,
    }


def install_common(
    app: FastAPI, settings: WebSettings, *, streams: Callable[[str], bool] = lambda _path: False
) -> None:
    """The request guard, CORS, security headers, JSON errors, an access log without keys, and (as set) docs
    and metrics. `streams` tells the long-lived event-stream paths, which the concurrency cap leaves out (as it
    does `/healthz`)."""
    # No slash redirects: a path with a forged id ending in `/` gets a 404, not a 307 to another route.
    app.router.redirect_slashes = False
    # Added first, so innermost of these: its 503s and 408s still get CORS and the security headers.
    # Liveness stays answerable under any load: a probe that got 503 "busy" would have the orchestrator restart
    # a process that is only busy.
    app.add_middleware(
        RequestGuard,
        limits=ServingLimits.of(settings),
        unmetered=lambda path: path == LIVENESS_PATH or streams(path),
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=[API_KEY_HEADER, "Last-Event-ID", "Content-Type", *tracing.TRACE_HEADERS],
    )
    app.add_middleware(SecurityHeaders, headers=SECURITY_HEADERS)
    install_access_log_filter()
    install_docs(app, settings)
    if settings.expose_metrics:

        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        body: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {"error": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette's 405 names the methods of the first route on the path only (GET of `GET /` and
            # `POST /`); a 405 is to list every method the path takes.
            exc.headers = dict(exc.headers or {}) | {"Allow": ", ".join(allowed_methods(app, request))}
        return await http_exception_handler(request, exc)

    app.openapi = _without_impossible_422(app)  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of `app` (other than a mount) takes on the request's path."""
    routes = [route for route in app.router.routes if not isinstance(route, Mount)]
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def _without_impossible_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi` without the 422 that FastAPI documents on every operation with parameters, where FastAPI
    cannot answer it: no body it parses, and only plain-text parameters (every value is a valid `str`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's cached document: what is done to it here is done once and for all
        paths = schema.get("paths", {})
        for path, route in _api_routes(app):
            if route.body_field is None and all(_any_text(p) for p in get_flat_params(route.dependant)):
                for method in route.methods or ():
                    paths.get(path, {}).get(method.lower(), {}).get("responses", {}).pop("422", None)
        _document_server_refusals(paths)
        if '"#/components/schemas/HTTPValidationError"' not in json.dumps(paths):
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    return openapi


_BUSY = (
    "Busy: more requests in progress, connections or body bytes in flight than the server's caps "
    "(MAX_CONCURRENT_REQUESTS, MAX_CONNECTIONS, MAX_BODY_BYTES_IN_FLIGHT); retry after `Retry-After`."
)
_TIMEOUT = "The request body stalled or arrived too slowly (BODY_IDLE_TIMEOUT_S, BODY_MIN_RATE_BPS); closed."


def _document_server_refusals(paths: dict[str, Any]) -> None:
    """Add what `RequestGuard` may answer on any route: 503 busy everywhere, 408 where there is a body."""
    for operations in paths.values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            busy = responses.setdefault("503", {"description": _BUSY})
            if _BUSY not in busy.get("description", ""):
                busy["description"] = f"{busy.get('description', '').rstrip()} Or: {_BUSY}".strip()
            busy.setdefault("headers", {}).setdefault("Retry-After", RETRY_AFTER_DOC["Retry-After"])
            if "requestBody" in operation:
                responses.setdefault("408", {"description": _TIMEOUT})


def _api_routes(app: FastAPI) -> Iterator[tuple[str, APIRoute]]:
    """Each FastAPI route of `app` with its full path, also those of included routers."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI before included routers kept their own routes: all are in app.routes
        yield from ((r.path_format, r) for r in app.routes if isinstance(r, APIRoute))
        return
    for context in contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.path_format:
            yield context.path_format, context.original_route


def _any_text(param: Any) -> bool:  # FastAPI's ModelField, which it does not export
    """Whether every value of this parameter, or none, is valid: a `str` with no constraint FastAPI checks."""
    return param.field_info.annotation in (str, str | None) and not param.field_info.metadata


class SecurityHeaders:
    """ASGI middleware: adds each header to every HTTP response that does not set it itself.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would buffer the event streams.
    """

    def __init__(self, app: ASGIApp, headers: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.headers = tuple(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the missing headers to the response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of an http(s) URL, without any user or password, for a CSP source list."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def page_csp(connect_to: Iterable[str] = ()) -> str:
    """The policy of an HTML page of ours: its own scripts, styles and images (plus data: and blob: images,
    the page's icon and thumbnails), and requests to itself and to `connect_to` origins."""
    connect = " ".join(["'self'", *connect_to])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"connect-src {connect}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def mask_query_secrets(text: str) -> str:
    """`text` with the value of every `api_key=` query parameter replaced by `***` (also when percent-encoded)."""

    def mask(match: re.Match[str]) -> str:
        name = unquote_plus(match.group(1)).strip().lower()
        return f"{match.group(1)}=***" if name in SECRET_QUERY_PARAMS else match.group(0)

    return _QUERY_PAIR.sub(mask, text) if "=" in text else text


class QuerySecretFilter(logging.Filter):
    """Masks keys in query strings of a log record, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask in the message and in its string arguments; never drops the record."""
        if isinstance(record.msg, str):
            record.msg = mask_query_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask_query_secrets(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_access_log_filter() -> None:
    """Mask `?api_key=` in uvicorn's log lines: its access log prints each request's path with the query."""
    for name in ("uvicorn.access", "uvicorn.error"):
        target = logging.getLogger(name)
        if not any(isinstance(f, QuerySecretFilter) for f in target.filters):
            target.addFilter(QuerySecretFilter())


def swagger_ui_dir() -> Path | None:
    """Where the swagger-ui-bundle package keeps Swagger UI's files; None when it is not installed."""
    try:
        bundle = importlib.import_module("swagger_ui_bundle")
    except ImportError:
        return None
    return Path(str(bundle.swagger_ui_path))


def install_docs(app: FastAPI, settings: WebSettings) -> None:
    """`/docs` from Swagger UI files served by the app itself (FastAPI's default page loads them from a CDN,
    which a machine without internet cannot reach), and `/openapi.json`; neither when EXPOSE_DOCS is false."""
    _drop_default_docs(app, keep_openapi=settings.expose_docs)
    if not settings.expose_docs:
        return
    assets = swagger_ui_dir()
    if assets is None:
        logger.warning("swagger-ui-bundle is not installed: /docs is off (/openapi.json is served)")
        return
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the validator's site
        )
        page.headers[CSP_HEADER] = docs_csp(bytes(page.body).decode())
        return page

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)


def docs_csp(html: str) -> str:
    """The docs page's policy: its inline start-up script by hash, everything else from the app itself."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )


def _drop_default_docs(app: FastAPI, *, keep_openapi: bool) -> None:
    """Remove the docs routes FastAPI adds by itself: Swagger UI and ReDoc from a CDN, and the schema unless kept."""
    dropped = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    if not keep_openapi:
        dropped.add(app.openapi_url)
    app.router.routes[:] = [
        route for route in app.router.routes if not (isinstance(route, Route) and route.path in dropped)
    ]
    app.docs_url = app.redoc_url = app.swagger_ui_oauth2_redirect_url = None
    if not keep_openapi:
        app.openapi_url = None
