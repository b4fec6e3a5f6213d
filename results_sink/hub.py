"""In-process fan-out of newly stored results to SSE streams: one bounded queue per client.

Runs on the event loop only; the consumer thread hands results over with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from results_sink import metrics
from results_sink.store import StoredResult

logger = logging.getLogger(__name__)

# Why a stream ends before every job it watches has a result; the name of its last SSE event.
EndReason = Literal["timeout", "shutdown", "overflow"]


class Subscription:
    """One client's interest in a set of jobs, and the queue their results arrive on."""

    def __init__(self, job_ids: Iterable[str], limit: int) -> None:
        self.job_ids = frozenset(job_ids)
        self.limit = limit
        self.end_reason: EndReason | None = None
        # Unbounded underneath so the end marker always fits; `offer` enforces `limit` for results.
        self._queue: asyncio.Queue[StoredResult | None] = asyncio.Queue()

    def offer(self, result: StoredResult) -> bool:
        """Queue a result without waiting; False when the client is `limit` results behind."""
        if self._queue.qsize() >= self.limit:
            return False
        self._queue.put_nowait(result)
        return True

    def drop(self, reason: EndReason) -> None:
        """End this subscription: `next()` returns None once the results already queued are taken."""
        self.end_reason = reason
        self._queue.put_nowait(None)

    async def next(self) -> StoredResult | None:
        """The next result, or None once the subscription was dropped."""
        return await self._queue.get()


class ResultHub:
    """Subscribers register the jobs they watch; `publish` hands each new result to those watching its job."""

    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self._by_job: dict[str, set[Subscription]] = {}
        self._subscriptions: set[Subscription] = set()

    @property
    def subscriber_count(self) -> int:
        """Live subscriptions (one per SSE stream)."""
        return len(self._subscriptions)

    @contextmanager
    def subscribe(self, job_ids: Iterable[str]) -> Iterator[Subscription]:
        """A subscription for the block's duration; removed on exit however the block ends."""
        subscription = Subscription(job_ids, self.queue_limit)
        self._add(subscription)
        try:
            yield subscription
        finally:
            self._remove(subscription)

    def publish(self, results: Sequence[StoredResult]) -> None:
        """Offer each result to its job's subscribers; drop one whose queue is full rather than wait."""
        for result in results:
            for subscription in list(self._by_job.get(result.job_id, ())):
                if not subscription.offer(result):
                    logger.warning(
                        "SSE client watching %d jobs is %d results behind; dropping it (it can resume with "
                        "Last-Event-ID)",
                        len(subscription.job_ids),
                        subscription.limit,
                    )
                    self._remove(subscription)
                    subscription.drop("overflow")

    def close(self) -> None:
        """End every subscription (at shutdown)."""
        for subscription in list(self._subscriptions):
            self._remove(subscription)
            subscription.drop("shutdown")

    def _add(self, subscription: Subscription) -> None:
        self._subscriptions.add(subscription)
        for job_id in subscription.job_ids:
            self._by_job.setdefault(job_id, set()).add(subscription)
        metrics.SSE_CLIENTS.inc()

    def _remove(self, subscription: Subscription) -> None:
        if subscription not in self._subscriptions:
            return
        self._subscriptions.discard(subscription)
        for job_id in subscription.job_ids:
            watchers = self._by_job.get(job_id)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._by_job[job_id]
        metrics.SSE_CLIENTS.dec()
