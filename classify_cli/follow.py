"""Following a group of jobs to their results: one SSE stream, resumed with Last-Event-ID, then polling."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse

from classify_cli.client import (
    RETRY_STATUSES,
    Job,
    RetryPolicy,
    Sleep,
    check_auth,
    error_text,
    retry_after_s,
    send,
)
from classify_cli.errors import ProtocolError

logger = logging.getLogger(__name__)

OnResult = Callable[[dict[str, Any]], None]
MAX_IDS_PER_STREAM = 100  # the results service's own limit per `/v1/events` stream
# The service pings every 15 s: three missed pings and the stream is taken for dead and resumed.
SSE_TIMEOUT = httpx.Timeout(30.0, read=45.0)
# Events with which the service ends a stream before every job has its result.
EARLY_END_EVENTS = frozenset({"timeout", "shutdown", "overflow"})
BACKOFF = -1.0  # what `_stream_once` returns for "reconnect after the retry policy's backoff"
POLL_FIRST_S = 0.5
POLL_MAX_S = 5.0


class Follower:
    """Follows up to 100 jobs until each has a result, handing every result to `on_result` once."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        jobs: Sequence[Job],
        on_result: OnResult,
        policy: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.http = http
        self.pending = {job.id: job for job in jobs}
        self.base = jobs[0].results_base
        self.on_result = on_result
        self.policy = policy
        self.sleep = sleep
        self.last_event_id: str | None = None

    async def run(self) -> None:
        """The stream while it delivers; polling for whatever it did not."""
        await self.stream()
        if self.pending:
            logger.info("polling %d job(s) the event stream did not deliver", len(self.pending))
            await self.poll()

    async def stream(self) -> None:
        """Read the stream, reconnecting with Last-Event-ID after a drop, until done or out of retries."""
        failures = 0
        while self.pending:
            before = len(self.pending)
            try:
                wait = await self._stream_once()
            except (httpx.TransportError, SSEError) as e:  # dropped, refused, timed out, or not SSE at all
                logger.warning("event stream from %s lost (%s); resuming", self.base, repr(e))
                wait = BACKOFF
            if wait is None:
                return
            failures = 0 if len(self.pending) < before else failures + 1
            if failures > self.policy.max_retries:
                return
            await self.sleep(self.policy.backoff(max(failures, 1)) if wait == BACKOFF else wait)

    async def _stream_once(self) -> float | None:
        """One connection: the wait before reconnecting, or None to stop streaming (ended, or refused)."""
        # Only the pending ids are asked for; Last-Event-ID makes the service skip what was already sent.
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        params = {"ids": ",".join(self.pending)}
        async with aconnect_sse(
            self.http, "GET", f"{self.base}/v1/events", params=params, headers=headers, timeout=SSE_TIMEOUT
        ) as source:
            response = source.response
            check_auth(response)
            if response.status_code == 200:
                return await self._read(source)
            await response.aread()
            logger.warning("event stream refused (%d: %s)", response.status_code, error_text(response))
            if response.status_code in RETRY_STATUSES:
                after = retry_after_s(response)
                return BACKOFF if after is None else min(after, self.policy.max_delay_s)
            return None if response.status_code < 500 else BACKOFF  # a 4xx will not change: poll instead

    async def _read(self, source: EventSource) -> float | None:
        async for event in source.aiter_sse():
            if event.event == "result":
                self._on_event(event.id, event.data)
            elif event.event in EARLY_END_EVENTS:
                logger.info("event stream ended early (%s), %d pending", event.event, len(self.pending))
                return BACKOFF if event.event == "shutdown" else 0.0
        # A stream the service ended by itself has sent all it will; anything missing is polled for.
        return None

    def _on_event(self, event_id: str, data: str) -> None:
        if event_id:
            self.last_event_id = event_id
        try:
            body = json.loads(data)
        except ValueError:
            logger.warning("ignoring a result event that is not JSON: %.100s", data)
            return
        self._resolve(body)

    def _resolve(self, body: dict[str, Any]) -> None:
        # A result can arrive twice (stream and poll, or a resumed stream); only the first one counts.
        if isinstance(body, dict) and self.pending.pop(str(body.get("id")), None) is not None:
            self.on_result(body)

    async def poll(self) -> None:
        """GET each pending result until every job has one, waiting longer between rounds."""
        interval = POLL_FIRST_S
        while self.pending:
            for job in list(self.pending.values()):
                await self._poll_one(job)
            if self.pending:
                await self.sleep(interval)
                interval = min(POLL_MAX_S, interval * 1.5)

    async def _poll_one(self, job: Job) -> None:
        response = await send(
            self.http,
            lambda: self.http.build_request("GET", job.result_url),
            self.policy,
            "results service",
            self.sleep,
        )
        check_auth(response)
        if response.status_code == 200:
            try:
                self._resolve(response.json())
            except ValueError as e:
                raise ProtocolError(f"{job.result_url} answered 200 without JSON") from e
        elif response.status_code == 404:
            error = f"unknown job ({error_text(response)})"
            self._resolve({"id": job.id, "status": "failed", "error": error})
        elif response.status_code != 202:
            logger.warning("%s answered %d: %s", job.result_url, response.status_code, error_text(response))
