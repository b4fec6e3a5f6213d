"""ResultWaiter, unit-level: the sink's SSE answers are FAKED by httpx.MockTransport (no sink, no broker)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from producer_api.results import ResultTimeoutError, ResultUnavailableError, ResultWaiter
from producer_api.settings import ApiSettings

pytestmark = pytest.mark.timeout(60)
KEY = "tests-api-key-0123456789"  # API_KEY takes 16 characters or more
SETTINGS = ApiSettings(results_internal_url="http://sink.internal", api_key=KEY, _env_file=None)  # type: ignore[call-arg]


def sse(*events: tuple[str, dict[str, object]]) -> bytes:
    return b": hello\n\n" + b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


def wait_with(handler: httpx.MockTransport, timeout_s: float = 2.0) -> dict[str, object]:
    async def run() -> dict[str, object]:
        waiter = ResultWaiter(SETTINGS, transport=handler)
        try:
            return await waiter.wait("job-1", timeout_s)
        finally:
            await waiter.aclose()

    return asyncio.run(run())


def test_the_result_event_is_returned_and_the_key_and_path_are_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = sse(
            ("ping", {}), ("result", {"id": "job-1", "status": "done", "label": "tabby", "score": 0.9})
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    assert wait_with(httpx.MockTransport(handler))["label"] == "tabby"
    assert str(seen[0].url) == "http://sink.internal/v1/results/job-1/events"
    assert seen[0].headers["x-api-key"] == KEY


def test_a_stream_that_ends_or_breaks_without_a_result_is_followed_again() -> None:
    calls = 0

    def handler(_request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("sink restarting")
        if calls == 2:
            return httpx.Response(
                200, content=b": nothing yet\n\n", headers={"content-type": "text/event-stream"}
            )
        if calls == 3:
            return httpx.Response(503)
        body = sse(("result", {"status": "failed", "error": "bad"}))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    assert wait_with(httpx.MockTransport(handler))["status"] == "failed"
    assert calls == 4


def test_a_refusal_by_the_sink_is_not_retried() -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(401, json={"error": "key"}))
    with pytest.raises(ResultUnavailableError, match="401"):
        wait_with(transport)


def test_no_result_in_time_raises_timeout() -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(404, json={"error": "unknown"}))
    with pytest.raises(ResultTimeoutError):
        wait_with(transport, timeout_s=0.6)
