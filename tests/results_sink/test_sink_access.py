"""Access control and CORS on the sink, and its settings' checks."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError
from sink_helpers import SinkServer

pytestmark = pytest.mark.timeout(60)
KEY = "tests-api-key-0123456789"  # API_KEY takes 16 characters or more


def test_api_key_guards_results_but_not_health(
    start_sink: Callable[..., SinkServer], job_id: Callable[[], str]
) -> None:
    sink = start_sink(api_key=KEY)
    job = job_id()
    with httpx.Client(base_url=sink.url, timeout=10) as client:
        for url in (f"/v1/results/{job}", f"/v1/events?ids={job}", f"/v1/results/{job}/events"):
            response = client.get(url)
            assert response.status_code == 401, url
            assert "X-API-Key" in response.json()["error"]
            assert client.get(url, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get(f"/v1/results/{job}", headers={"X-API-Key": KEY}).status_code == 202
        # EventSource cannot send headers; the key may come as a query parameter instead.
        with client.stream("GET", f"/v1/results/{job}/events", params={"api_key": KEY}) as stream:
            assert stream.status_code == 200
        for open_url in ("/healthz", "/readyz", "/metrics"):
            assert client.get(open_url).status_code == 200


def test_cors_allows_only_the_configured_origins(
    sink: SinkServer, client: httpx.Client, job_id: Callable[[], str]
) -> None:
    url = f"/v1/results/{job_id()}"
    allowed = client.get(url, headers={"Origin": "http://localhost:8000"})
    other = client.get(url, headers={"Origin": "http://evil.example"})
    preflight = client.options(
        url,
        headers={
            "Origin": "http://localhost:8000",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Last-Event-ID",
        },
    )

    assert allowed.headers["access-control-allow-origin"] == "http://localhost:8000"
    assert "access-control-allow-origin" not in other.headers
    assert preflight.status_code == 200
    assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()


def test_settings_refuse_unsafe_values(sink_settings: Callable[..., object]) -> None:
    with pytest.raises(ValidationError, match="RESULTS_STORE_URL"):
        sink_settings(results_store_url="mysql://db/results")
    with pytest.raises(ValidationError, match="SSE_PING_INTERVAL_S"):
        sink_settings(sse_ping_interval_s=30, sse_stream_timeout_s=10)
    with pytest.raises(ValidationError, match="CORS_ORIGINS"):
        sink_settings(cors_origins="*")
