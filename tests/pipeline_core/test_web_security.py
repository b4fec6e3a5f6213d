"""What both web services share at their edge: key rules, masked secrets, security headers, offline docs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import Depends, FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline_core.settings import WebSettings, mask_url_password
from pipeline_core.startup import load_settings
from pipeline_core.web import QuerySecretFilter, api_key_guard, install_common, mask_query_secrets
from results_sink.settings import SinkSettings

KEY = "tests-api-key-0123456789"
IN_CI = bool(os.environ.get("CI"))


def web(**values: Any) -> WebSettings:
    return WebSettings(_env_file=None, **values)  # type: ignore[call-arg]


# ---- API_KEY ----


@pytest.mark.parametrize("key", ["", "short", "x" * 15, " " + "x" * 20, "x" * 20 + "\n", "ключ" * 5])
def test_weak_or_unusable_api_keys_are_refused_naming_api_key(key: str) -> None:
    with pytest.raises(ValidationError, match="API_KEY"):
        web(api_key=key)


def test_an_empty_api_key_in_the_environment_stops_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", "")
    assert load_settings(WebSettings, "web_service") is None
    assert "API_KEY is empty" in capsys.readouterr().err


def test_a_good_key_is_kept_and_unset_means_open() -> None:
    assert web(api_key="x" * 16).api_key is not None
    assert web().api_key is None


def test_a_refused_key_is_not_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", "hunter2-secret")  # 14 characters: refused
    assert load_settings(WebSettings, "web_service") is None
    err = capsys.readouterr().err
    assert "API_KEY is 14 characters long" in err and "hunter2" not in err


# ---- passwords in URLs ----

# Marked, so that no other setting's value can hold the password by chance (like "0000" in "10000").
PASSWORDS = st.text(alphabet="!$%^*()~;,0123456789XYZ@:/", max_size=30).map(lambda text: f"PW{text}")


@settings(max_examples=200, derandomize=IN_CI, deadline=None)
@given(scheme=st.sampled_from(["postgresql", "postgres"]), password=PASSWORDS)
def test_a_store_password_never_reaches_the_settings_line(scheme: str, password: str) -> None:
    url = f"{scheme}://results:{password}@db.internal:5432/results"
    shown = SinkSettings(results_store_url=url, _env_file=None).public_dict()  # type: ignore[call-arg]
    assert password not in str(shown), shown
    assert shown["results_store_url"] == f"{scheme}://results:***@db.internal:5432/results"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:p@ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("https://user:pw@sink.internal:8001", "https://user:***@sink.internal:8001"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///var/results.db", "sqlite:///var/results.db"),
        ("http://localhost:8001", "http://localhost:8001"),
    ],
)
def test_url_passwords_are_masked_and_nothing_else(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown


def test_a_refused_store_url_is_printed_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RESULTS_STORE_URL", "mysql://results:hunter2@db/results")
    assert load_settings(SinkSettings, "results_sink") is None
    err = capsys.readouterr().err
    assert "RESULTS_STORE_URL" in err and "hunter2" not in err


def test_secret_settings_are_masked() -> None:
    shown = web(api_key=KEY, job_id_secret="job-id-secret-value").public_dict()
    assert shown["api_key"] == shown["job_id_secret"] == "***"
    assert KEY not in str(shown)


# ---- ?api_key= in logs ----

# The parameter's name as it may come on the wire: Starlette percent-decodes names, so these all reach it.
SPELLINGS = [
    "api_key",
    "API_KEY",
    "Api_Key",
    "api%5Fkey",
    "api%5fkey",
    "%61pi_key",
    "%61%70%69%5f%6b%65%79",
    "api_key+",
]


@settings(max_examples=300, derandomize=IN_CI, deadline=None)
@given(
    name=st.sampled_from(SPELLINGS),
    key=st.text(alphabet=st.characters(codec="ascii", exclude_characters="&# \"'"), min_size=16, max_size=40),
    before=st.lists(st.sampled_from(["ids=a,b", "x=1", "flag", "api=1", "key=2"]), max_size=3),
    after=st.lists(st.sampled_from(["ids=c", "y=", "z"]), max_size=3),
)
def test_access_log_lines_never_show_a_key(name: str, key: str, before: list[str], after: list[str]) -> None:
    encoded = quote(key, safe="")
    query = "&".join([*before, f"{name}={encoded}", *after])
    path = f"/v1/events?{query}"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "GET", path, "1.1", 200), None,
    )  # fmt: skip
    QuerySecretFilter().filter(record)
    line = record.getMessage()
    assert encoded not in line and key not in line, line
    assert line.startswith('127.0.0.1:5555 - "GET /v1/events?') and line.endswith('HTTP/1.1" 200')
    for pair in before + after:
        assert pair in line  # only the key is masked


def test_free_text_with_a_key_is_masked_too() -> None:
    assert mask_query_secrets("GET /x?api_key=abc HTTP/1.1") == "GET /x?api_key=*** HTTP/1.1"
    assert mask_query_secrets("no query here: api_key=abc") == "no query here: api_key=abc"


def test_uvicorn_loggers_get_the_filter_once() -> None:
    app = FastAPI()
    install_common(app, web())
    install_common(FastAPI(), web())
    for name in ("uvicorn.access", "uvicorn.error"):
        filters = [f for f in logging.getLogger(name).filters if isinstance(f, QuerySecretFilter)]
        assert len(filters) == 1, name


# ---- an app with the common parts ----


def app_with(**values: Any) -> FastAPI:
    """A small app with what both services install, a header-only route and a stream-like route."""
    config = web(**values)
    app = FastAPI(title="edge")
    install_common(app, config)

    @app.get("/plain", dependencies=[Depends(api_key_guard(config))])
    def plain() -> dict[str, str]:
        return {"ok": "plain"}

    @app.get("/stream", dependencies=[Depends(api_key_guard(config, query_allowed=True))])
    def stream() -> dict[str, str]:
        return {"ok": "stream"}

    return app


def call(app: FastAPI, *requests: tuple[str, dict[str, Any]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as c:
            return [await c.get(url, **kwargs) for url, kwargs in requests]

    return asyncio.run(run())


def test_the_query_key_is_taken_only_where_allowed() -> None:
    app = app_with(api_key=KEY)
    header = {"headers": {"X-API-Key": KEY}}
    in_query = {"params": {"api_key": KEY}}
    both = header | in_query
    answers = call(
        app,
        ("/plain", header),
        ("/plain", in_query),
        ("/plain", both),
        ("/stream", in_query),
        ("/stream", {}),
    )
    assert [r.status_code for r in answers] == [200, 401, 401, 200, 401]
    assert "only on the event-stream routes" in answers[1].json()["error"]


@settings(max_examples=150, derandomize=IN_CI, deadline=None)
@given(query=st.text(max_size=80), name=st.sampled_from([*SPELLINGS, "api_key[]", "api_key="]))
def test_any_query_string_gets_a_clear_answer(query: str, name: str) -> None:
    app = app_with(api_key=KEY)
    raw = f"{name}={quote(query, safe='')}&{quote(query, safe='=&')}"
    for route in ("/plain", "/stream"):
        (response,) = call(app, (f"{route}?{raw}", {"headers": {"X-API-Key": KEY}}))
        assert response.status_code in (200, 401), (route, raw, response.status_code)
        assert response.status_code == 200 or response.json()["error"]


def test_every_response_has_the_security_headers() -> None:
    app = app_with()
    for response in call(app, ("/plain", {}), ("/missing", {}), ("/metrics", {}), ("/openapi.json", {})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "default-src 'none'" in response.headers["content-security-policy"]


def test_docs_are_served_by_the_app_itself() -> None:
    app = app_with()
    (page, redoc) = call(app, ("/docs", {}), ("/redoc", {}))
    assert page.status_code == 200 and redoc.status_code == 404
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another site
    for response in call(app, *((u, {}) for u in urls)):
        assert response.status_code == 200 and len(response.content) > 500, response.url
    # The one inline script runs because the page's policy names its hash.
    (script,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = page.headers["content-security-policy"]
    assert f"'sha256-{digest}'" in policy and "script-src 'self' 'sha256-" in policy
    assert "frame-ancestors 'none'" in policy


def test_docs_and_metrics_can_be_kept_off_the_port() -> None:
    closed = app_with(expose_docs=False, expose_metrics=False)
    for url in ("/docs", "/openapi.json", "/metrics", "/redoc", "/docs/assets/swagger-ui.css"):
        (response,) = call(closed, (url, {}))
        assert response.status_code == 404, url
    (plain,) = call(closed, ("/plain", {}))
    assert plain.status_code == 200
