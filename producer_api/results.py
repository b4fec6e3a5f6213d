"""Waiting for one job's result by following the sink's server-sent events (POST /predict, POST /)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from pipeline_core.errors import PipelineError
from pipeline_core.web import API_KEY_HEADER
from producer_api.settings import ApiSettings

logger = logging.getLogger(__name__)

RETRY_DELAY_S = 0.25


class ResultTimeoutError(PipelineError):
    """No result arrived within the wait."""

    retriable = True


class ResultUnavailableError(PipelineError):
    """The sink refused to stream the result (a 4xx other than 404): retrying will not help."""


class ResultWaiter:
    """Follows `GET {results_internal_url}/v1/results/{id}/events` to its `result` event; one client."""

    def __init__(self, settings: ApiSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {API_KEY_HEADER: settings.api_key.get_secret_value()} if settings.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=settings.results_url_for_api,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(settings.predict_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def wait(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        """The job's result (the sink's JSON), or `ResultTimeoutError` after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    result = await self._follow(job_id)
                    if result is not None:
                        return result
                    await asyncio.sleep(RETRY_DELAY_S)
        except TimeoutError as e:
            raise ResultTimeoutError(f"no result for job {job_id} within {timeout_s:.0f} s") from e

    async def _follow(self, job_id: str) -> dict[str, Any] | None:
        """One SSE connection: the result, or None when the stream ended or broke without one (retry)."""
        try:
            async with aconnect_sse(self._client, "GET", f"/v1/results/{job_id}/events") as source:
                if source.response.status_code != 200:
                    return self._refused(job_id, source.response.status_code)
                async for event in source.aiter_sse():
                    if event.event == "result":
                        result: dict[str, Any] = json.loads(event.data)
                        return result
        except (httpx.TransportError, SSEError, json.JSONDecodeError) as e:
            logger.warning(
                "results stream for job %s broke (%s: %s); reconnecting", job_id, type(e).__name__, e
            )
        return None

    @staticmethod
    def _refused(job_id: str, status: int) -> None:
        if 400 <= status < 500 and status not in (404, 408, 425, 429):
            raise ResultUnavailableError(f"the results sink answered {status} for job {job_id}")
        logger.warning("the results sink answered %d for job %s; retrying", status, job_id)

    async def aclose(self) -> None:
        """Close the shared HTTP client."""
        await self._client.aclose()
