"""The sink's FastAPI app: a lifespan that opens the store, starts the consumer, and stops both in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from pipeline_core.web import install_common, telemetry
from results_sink.consumer import OnStored, SinkConsumer
from results_sink.hub import ResultHub
from results_sink.retention import purge_periodically
from results_sink.routes import create_router, health
from results_sink.settings import SinkSettings
from results_sink.store import SharedResultStore, StoredResult, open_store

logger = logging.getLogger(__name__)


def _hand_to_hub(loop: asyncio.AbstractEventLoop, hub: ResultHub) -> OnStored:
    """The consumer thread's callback: the hub lives on the event loop, so hand results over to it."""

    def on_stored(results: list[StoredResult]) -> None:
        if loop.is_closed():
            logger.warning("event loop closed; %d stored results not pushed to live streams", len(results))
            return
        loop.call_soon_threadsafe(hub.publish, results)

    return on_stored


def _fed_by_the_store(results: list[StoredResult]) -> None:
    """The consumer's callback when the store's feed hands every result to the hub (these ones too)."""


def create_app(settings: SinkSettings, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """The results sink for these settings; its lifespan runs the consumer thread. `on_fatal` is called if
    that thread dies (the entry point then stops the server and exits non-zero)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.results_store_url)
        hub = ResultHub(queue_limit=settings.max_ids_per_stream)
        on_stored = _hand_to_hub(asyncio.get_running_loop(), hub)
        # A shared store (PostgreSQL) feeds the hub with what every replica stores, so the consumer must not
        # hand its own results over a second time; a local one (SQLite) is fed by the consumer alone.
        try:
            feed = store.listen(on_stored) if isinstance(store, SharedResultStore) else None
        except BaseException:
            store.close()
            raise
        consumer = SinkConsumer(
            settings, store, on_stored if feed is None else _fed_by_the_store, on_fatal=on_fatal
        )
        app.state.store, app.state.hub, app.state.consumer = store, hub, consumer
        consumer.start()
        purge = asyncio.create_task(purge_periodically(store, settings), name="retention-purge")
        try:
            yield
        finally:
            purge.cancel()
            # Reverse order: no new results, then no streams waiting for any, then the store.
            await to_thread.run_sync(consumer.stop)
            if feed is not None:
                await to_thread.run_sync(feed.stop)
            hub.close()
            store.close()
            logger.info("results sink stopped")

    # docs_url=None: install_common serves /docs from the bundled Swagger UI files, not from a CDN.
    app = FastAPI(
        title="Results sink",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=telemetry(),
    )
    app.state.settings = settings
    install_common(app, settings, streams=is_event_stream)
    app.include_router(health)
    app.include_router(create_router(settings))
    return app


def is_event_stream(path: str) -> bool:
    """The SSE routes (`/v1/events`, `/v1/results/{id}/events`): capped by MAX_SSE_CONNECTIONS, not by the
    request concurrency cap, since each stays open for minutes."""
    return path.endswith("/events")
