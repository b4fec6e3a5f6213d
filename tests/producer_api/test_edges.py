"""The upload API under hostile traffic, without a broker: charsets, form parts, keys in URLs, page headers.

Every case here is refused before anything would be published, so no Kafka is needed: the API starts not
ready (nothing listens on its bootstrap port) and answers with the clear 4xx each case deserves.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from urllib.parse import quote

import pytest
from api_helpers import AppClient, closed_port, make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer_api.app import create_app
from producer_api.forms import MAX_FIELD_BYTES, MAX_FIELDS
from producer_api.settings import ApiSettings

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),  # kafka-python's sockets
]
IN_CI = bool(os.environ.get("CI"))
KEY = "tests-api-key-0123456789"
BOUNDARY = "b0undary"
NOT_TEXT = ["rot13", "rot_13", "zlib", "zlib_codec", "base64", "hex", "bz2", "uu", "quopri"]
UNUSABLE = ["undefined", "idna", "punycode", "utf-16", "utf-32", "utf-7", "unicode_escape", "cp037", "hz", ""]
USABLE = ["utf-8", "UTF8", "latin-1", "iso-8859-15", "windows-1252", "us-ascii", "shift_jis", "utf-8-sig"]
# What a header value can hold (clients send bytes, servers read them as Latin-1), less quotes and escapes.
LATIN_1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters='"\\\x7f')


@pytest.fixture(scope="module")
def api() -> Iterator[AppClient]:
    settings = ApiSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}",
        broker_startup_wait_s=0,
        max_backlog_images=0,
        api_key=KEY,
        results_public_url="http://results.example:8001",
        _env_file=None,  # type: ignore[call-arg]
    )
    with AppClient(create_app(settings)) as client:
        client.http.headers["X-API-Key"] = KEY
        yield client


def form(*parts: bytes) -> bytes:
    return b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + part + b"\r\n" for part in parts) + (
        b"--" + BOUNDARY.encode() + b"--\r\n"
    )


def field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


def file_part(name: str, data: bytes, filename: str = "a.png") -> bytes:
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    return head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data


def multipart(charset: str | None) -> str:
    suffix = "" if charset is None else f"; charset={charset}"
    return f"multipart/form-data; boundary={BOUNDARY}{suffix}"


# ---- charsets ----


@settings(
    max_examples=150,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    charset=st.sampled_from(NOT_TEXT + UNUSABLE + USABLE)
    | st.text(LATIN_1, max_size=60).map(lambda text: f'"{text}"')
    | st.from_regex(r"[A-Za-z0-9_.:+-]{1,50}", fullmatch=True),
    route=st.sampled_from(["/v1/images", "/predict", "/", "/feedback"]),
)
def test_any_charset_gets_a_clear_4xx_or_is_read(api: AppClient, charset: str, route: str) -> None:
    # Not an image, and an empty report: with a readable charset the answer is the ordinary refusal (or 200
    # for the feedback route, which drops an empty report), never a 5xx.
    body = form(file_part("file", b"plain text, not an image"), field("report", b""))
    headers = {"content-type": multipart(charset).encode("latin-1")}
    if route == "/feedback":
        body = form(field("report", b""))
    response = api.post(route, content=body, headers=headers)
    assert response.status_code < 500, (charset, route, response.status_code, response.text)
    if charset.strip('"') in NOT_TEXT + UNUSABLE:
        assert response.status_code == 400, (charset, route)
    if route in ("/v1/images", "/feedback") and response.status_code == 400:
        assert response.json()["error"] in ("invalid_charset", "not_an_image"), response.text


@pytest.mark.parametrize("charset", NOT_TEXT + UNUSABLE)
def test_non_text_codecs_are_a_400_naming_the_charset(api: AppClient, charset: str) -> None:
    body = form(file_part("file", make_image()))
    response = api.post("/v1/images", content=body, headers={"content-type": multipart(charset)})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_charset"
    assert f"charset {charset!r}" in response.json()["reason"]


def test_a_readable_charset_reads_the_form(api: AppClient) -> None:
    body = form(file_part("file", b"GIF89a-not-really"))
    response = api.post("/v1/images", content=body, headers={"content-type": multipart("latin-1")})
    assert response.json()["error"] in ("not_an_image", "invalid_image"), response.text


# ---- every part counts ----


def test_repeated_fields_count_toward_the_field_limit(api: AppClient) -> None:
    parts = [field("note", b"x") for _ in range(MAX_FIELDS + 1)]
    response = api.post("/v1/images", content=form(*parts), headers={"content-type": multipart(None)})
    assert response.status_code == 400 and response.json()["error"] == "invalid_form", response.text


def test_files_under_other_names_count_too(api: AppClient) -> None:
    parts = [file_part("attachment", b"x" * 10) for _ in range(MAX_FIELDS + 1)]
    response = api.post("/v1/images", content=form(*parts), headers={"content-type": multipart(None)})
    assert response.status_code == 400 and response.json()["error"] == "invalid_form", response.text


def test_the_fields_share_one_byte_limit(api: AppClient) -> None:
    each = MAX_FIELD_BYTES // 3 + 1
    parts = [field(f"note{n}", b"x" * each) for n in range(3)]
    response = api.post("/v1/images", content=form(*parts), headers={"content-type": multipart(None)})
    assert response.status_code == 413 and response.json()["error"] == "field_too_large", response.text


def test_a_part_with_huge_headers_is_refused(api: AppClient) -> None:
    # Far over one part's header limit. python-multipart (0.0.2x) refuses this too, before ours; older
    # releases, which pyproject still allows, do not.
    padding = (b"X-Padding: " + b"y" * 2000 + b"\r\n") * 40
    part = padding + file_part("file", make_image())
    response = api.post("/v1/images", content=form(part), headers={"content-type": multipart(None)})
    assert response.status_code == 400 and response.json()["error"] == "invalid_form", response.text


def test_feedback_without_a_length_is_still_bounded(api: AppClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        yield b"report="
        for _ in range(100):
            yield b"x" * 1024

    response = api.post(
        "/feedback", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "body_too_large"


# ---- keys in URLs ----


@settings(
    max_examples=60,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.sampled_from(["api_key", "api%5Fkey", "%61pi_key"]),
    value=st.text(max_size=40),
    route=st.sampled_from(["/v1/images", "/predict", "/feedback", "/"]),
)
def test_a_key_in_the_query_string_is_refused_on_uploads(
    api: AppClient, name: str, value: str, route: str
) -> None:
    response = api.post(f"{route}?{name}={quote(value, safe='')}", files={"file": ("a.png", make_image())})
    assert response.status_code == 401, (route, response.status_code)
    assert "?api_key= is accepted only on the event-stream routes" in response.json()["error"]


# ---- the page's headers ----


def test_the_page_policy_allows_exactly_what_the_page_loads(api: AppClient) -> None:
    page = api.get("/")
    directives = (d.split(" ", 1) for d in page.headers["content-security-policy"].split("; "))
    policy = {name: value for name, value in directives}
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self' http://results.example:8001"  # the sink's streams and results
    assert policy["frame-ancestors"] == "'none'" and page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    html = files("producer_api").joinpath("static/index.html").read_text(encoding="utf-8")
    # Nothing inline that the policy would block: every script and style sheet is a file of the page's own.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert api.get(url).status_code == 200, url


def test_the_server_side_result_page_has_the_policy_too(api: AppClient) -> None:
    response = api.post("/", files={"file": ("a.txt", b"not an image")})
    assert response.status_code == 400
    assert "connect-src 'self' http://results.example:8001" in response.headers["content-security-policy"]
