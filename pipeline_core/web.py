"""What the two web services (producer_api, results_sink) share: API-key check, CORS, security headers, docs,
metrics, errors, and an access log that never shows a key.

Only the web services import this module (it needs FastAPI); the inference consumer never does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline_core.settings import WebSettings

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_PARAM = "api_key"
CSP_HEADER = "Content-Security-Policy"
DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"

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


def api_key_guard(settings: WebSettings, *, query_allowed: bool = False) -> Callable[[Request], None]:
    """A dependency that refuses requests without the configured API key (none configured: all pass).

    `query_allowed` also takes the key as `?api_key=`, for the event streams only: a browser's EventSource
    cannot send headers. Anywhere else a key in the URL is refused, so that clients keep it out of URLs.
    """
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
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

    return check


def install_common(app: FastAPI, settings: WebSettings) -> None:
    """CORS, security headers, JSON errors, an access log without keys, and (as set) docs and metrics."""
    # No slash redirects: a path with a forged id ending in `/` gets a 404, not a 307 to another route.
    app.router.redirect_slashes = False
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=[API_KEY_HEADER, "Last-Event-ID", "Content-Type"],
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
