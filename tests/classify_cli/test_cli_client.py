"""Uploads: retries on 429/503 honour Retry-After, are bounded, and errors become clear messages."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable

import httpx
import pytest
from cli_fakes import API, Sleeps, upload_names

from classify_cli.client import RetryPolicy, retry_after_s, upload
from classify_cli.errors import (
    AuthenticationError,
    ExitCode,
    ProtocolError,
    SystemUnreachableError,
    UploadRejectedError,
)

pytestmark = pytest.mark.timeout(60)

FILES = [("a.jpg", b"aaa"), ("b.jpg", b"bbb")]
JOBS = {
    "jobs": [
        {
            "id": f"j{n}",
            "filename": f"{n}.jpg",
            "result_url": f"http://r/v1/results/j{n}",
            "events_url": f"http://r/v1/results/j{n}/events",
        }
        for n in range(2)
    ]
}


def run_upload(
    responses: list[httpx.Response | Exception], policy: RetryPolicy | None = None
) -> tuple[list[httpx.Request], Sleeps, Callable[[], object]]:
    requests: list[httpx.Request] = []
    sleeps = Sleeps()

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        item = responses[min(len(requests), len(responses)) - 1]
        if isinstance(item, Exception):
            raise item
        return item

    async def go() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await upload(http, API, FILES, policy or RetryPolicy(), sleeps)

    return requests, sleeps, lambda: asyncio.run(go())


def test_429_and_503_are_retried_after_the_seconds_retry_after_asks_for() -> None:
    requests, sleeps, call = run_upload(
        [
            httpx.Response(503, headers={"Retry-After": "7"}, json={"error": "broker_unavailable"}),
            httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "busy"}),
            httpx.Response(202, json=JOBS),
        ]
    )
    jobs = call()
    assert [job.id for job in jobs] == ["j0", "j1"]  # type: ignore[attr-defined]
    assert sleeps == [7.0, 2.0]
    assert len(requests) == 3
    assert [upload_names(r) for r in requests] == [["a.jpg", "b.jpg"]] * 3, "each retry sends the whole batch"
    assert all(b"bbb" in r.content for r in requests)


def test_without_retry_after_the_wait_doubles_and_the_retries_are_bounded() -> None:
    policy = RetryPolicy(max_retries=3, base_delay_s=0.5)
    requests, sleeps, call = run_upload([httpx.Response(503, json={"error": "broker_unavailable"})], policy)
    with pytest.raises(SystemUnreachableError, match=r"API at http://api.test is still unavailable") as info:
        call()
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(requests) == 4
    assert info.value.exit_code == ExitCode.UNREACHABLE


def test_a_huge_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_delay_s=30)
    hour = httpx.Response(429, headers={"Retry-After": "3600"})
    _, sleeps, call = run_upload([hour, httpx.Response(202, json=JOBS)], policy)
    call()
    assert sleeps == [30]


def test_retry_after_may_be_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    seconds = retry_after_s(httpx.Response(503, headers={"Retry-After": when}))
    assert seconds is not None
    assert 15 <= seconds <= 20
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Response(503)) is None


def test_a_refused_connection_is_retried_briefly_then_reported_as_unreachable() -> None:
    requests, sleeps, call = run_upload([httpx.ConnectError("Connection refused")])
    with pytest.raises(SystemUnreachableError, match=r"cannot reach the upload API at http://api.test"):
        call()
    assert len(requests) == 3
    assert sleeps == [0.5, 1.0]


def test_a_dropped_connection_is_retried_then_succeeds() -> None:
    requests, _, call = run_upload([httpx.RemoteProtocolError("peer closed"), httpx.Response(202, json=JOBS)])
    assert len(call()) == 2  # type: ignore[arg-type]
    assert len(requests) == 2


def test_a_refused_image_raises_with_the_apis_reason_and_file_name() -> None:
    body = {"error": "invalid_image", "filename": "b.jpg", "reason": "the image is damaged or truncated"}
    requests, sleeps, call = run_upload([httpx.Response(400, json=body)])
    with pytest.raises(UploadRejectedError) as info:
        call()
    assert (info.value.status, info.value.error, info.value.filename) == (400, "invalid_image", "b.jpg")
    assert str(info.value) == "invalid_image: the image is damaged or truncated"
    assert (len(requests), sleeps) == (1, []), "a 4xx is not retried"


def test_a_missing_api_key_says_how_to_give_one() -> None:
    _, _, call = run_upload([httpx.Response(401, json={"error": "missing or wrong X-API-Key header"})])
    with pytest.raises(AuthenticationError, match="--api-key or CLASSIFY_API_KEY") as info:
        call()
    assert info.value.exit_code == ExitCode.USAGE


def test_an_answer_that_is_not_the_contract_is_a_protocol_error() -> None:
    _, _, call = run_upload([httpx.Response(202, json={"jobs": [JOBS["jobs"][0]]})])
    with pytest.raises(ProtocolError, match="accepted 2 files but returned 1 jobs"):
        call()
    _, _, call = run_upload([httpx.Response(202, text="<html>hello</html>")])
    with pytest.raises(ProtocolError, match="without jobs"):
        call()
