"""Deletes results and feedback past their retention (RESULTS_RETENTION_S, FEEDBACK_RETENTION_S), at start and
then every PURGE_INTERVAL_S, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time

from anyio import to_thread

from results_sink.settings import SinkSettings
from results_sink.store import ResultStore, StoreError

logger = logging.getLogger(__name__)


def purge_once(store: ResultStore, settings: SinkSettings, now: float | None = None) -> tuple[int, int]:
    """Delete what is past its retention now; how many results and reports went."""
    now = time.time() if now is None else now
    results = now - settings.results_retention_s if settings.results_retention_s > 0 else None
    feedback = now - settings.feedback_retention_s if settings.feedback_retention_s > 0 else None
    if results is None and feedback is None:
        return 0, 0
    counts = store.purge(results, feedback)
    if any(counts):
        logger.info("deleted %d results and %d feedback reports past their retention", *counts)
    return counts


async def purge_periodically(store: ResultStore, settings: SinkSettings) -> None:
    """Run `purge_once` now and every PURGE_INTERVAL_S until cancelled; a store that is away is tried next time."""
    while True:
        try:
            await to_thread.run_sync(purge_once, store, settings)
        except StoreError as e:
            logger.warning(
                "retention purge failed (%s); trying again in %.0f s", e, settings.purge_interval_s
            )
        await asyncio.sleep(settings.purge_interval_s)
