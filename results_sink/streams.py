"""SSE streams of results: stored ones first, then live ones from the hub, ending when every job has one."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio import to_thread
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from pipeline_core import tracing
from results_sink.hub import EndReason, ResultHub, Subscription
from results_sink.models import ResultResponse
from results_sink.settings import SinkSettings
from results_sink.store import ResultStore, StoredResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What one stream sends: `result` events for these jobs with seq above `after_seq`."""

    job_ids: Sequence[str]
    after_seq: int


def result_event(stored: StoredResult) -> ServerSentEvent:
    """The SSE event of one stored result; its id is the store's seq, which Last-Event-ID resumes from. Its span
    (in the image's trace, from the result's storing to this event) is the trace's last hop."""
    parent = tracing.context_of(stored.event.traceparent)
    if tracing.is_traced(parent):
        tracing.record_span(
            "deliver",
            stored.stored_at,
            time.time(),
            parent,
            attributes={"job.id": stored.event.job_id, "sse.event_id": stored.seq},
        )
    return ServerSentEvent(
        data=ResultResponse.from_stored(stored).model_dump_json(), event="result", id=str(stored.seq)
    )


async def _next(
    subscription: Subscription, shutdown: anyio.Event, timeout_s: float
) -> StoredResult | EndReason:
    """The next live result, or why the stream has to end first."""
    get = asyncio.ensure_future(subscription.next())
    stop = asyncio.ensure_future(shutdown.wait())
    try:
        done, _ = await asyncio.wait(
            {get, stop}, timeout=max(timeout_s, 0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        get.cancel()
        stop.cancel()
    if get in done:
        result = get.result()
        return result if result is not None else subscription.end_reason or "shutdown"
    return "shutdown" if stop in done else "timeout"


async def result_events(
    request: StreamRequest, hub: ResultHub, store: ResultStore, shutdown: anyio.Event, timeout_s: float
) -> AsyncIterator[ServerSentEvent]:
    """Every job's `result` (seq > after_seq), stored ones first in seq order, then as they are stored."""
    deadline = anyio.current_time() + timeout_s
    # Subscribe before reading the store: a result stored in between then arrives twice, never zero times.
    with hub.subscribe(request.job_ids) as subscription:
        pending = set(request.job_ids)
        for stored in await to_thread.run_sync(store.results_after, request.job_ids, 0):
            pending.discard(stored.job_id)
            if stored.seq > request.after_seq:
                yield result_event(stored)
        while pending:
            item = await _next(subscription, shutdown, deadline - anyio.current_time())
            if isinstance(item, str):
                logger.info(
                    "SSE stream ends (%s), %d of %d jobs pending", item, len(pending), len(request.job_ids)
                )
                yield ServerSentEvent(event=item, data=json.dumps({"pending": sorted(pending)}))
                return
            if item.job_id in pending:
                pending.discard(item.job_id)
                if item.seq > request.after_seq:
                    yield result_event(item)


class _ClosingEventSourceResponse(EventSourceResponse):
    """An EventSourceResponse that calls `on_close` once it is over, however it ended."""

    def __init__(
        self,
        events: AsyncIterator[ServerSentEvent],
        shutdown: anyio.Event,
        settings: SinkSettings,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(
            events,
            ping=settings.sse_ping_interval_s,
            send_timeout=settings.sse_send_timeout_s,
            shutdown_event=shutdown,
            shutdown_grace_period=settings.shutdown_grace_s,
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; then release what it held, also when the client left or the server stops."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def stream_response(
    request: StreamRequest,
    hub: ResultHub,
    store: ResultStore,
    settings: SinkSettings,
    on_close: Callable[[], None] = lambda: None,
) -> EventSourceResponse:
    """The SSE response: pings, a per-send timeout for stuck clients, a cooperative end at shutdown, and
    `on_close` called when it is over."""
    shutdown = anyio.Event()
    events = result_events(request, hub, store, shutdown, settings.sse_stream_timeout_s)
    return _ClosingEventSourceResponse(events, shutdown, settings, on_close)
