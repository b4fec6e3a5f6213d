"""Admission control: shed uploads with 429 before the queue of unclassified images grows without bound.

The backlog is the inference group's lag on the images topic (records not yet committed by a consumer), read
in a worker thread every `BACKLOG_CHECK_INTERVAL_S`. Past `MAX_BACKLOG_IMAGES`, uploads get `429` with
`Retry-After`; every image already accepted still gets its result.
"""

from __future__ import annotations

import asyncio
import logging
import math

from kafka import KafkaAdminClient

from pipeline_core.clients import create_admin
from pipeline_core.errors import PipelineError
from pipeline_core.lag import group_lag
from producer_api import metrics
from producer_api.broker import any_port_open
from producer_api.settings import ApiSettings

logger = logging.getLogger(__name__)


class OverloadedError(PipelineError):
    """Too many accepted images wait for a consumer; the client should retry after `retry_after_s`."""

    retriable = True

    def __init__(self, backlog: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{backlog} images are waiting to be classified (limit {limit}); retry later")
        self.retry_after_s = retry_after_s


class Admission:
    """Keeps the current backlog up to date in the background; `check()` refuses uploads past the limit."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._backlog = 0
        self._drain_per_s = math.nan
        self._admin: KafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Images accepted but not yet classified and committed, as last measured."""
        return self._backlog

    def check(self, images: int) -> None:
        """Raise `OverloadedError` if admitting `images` more would pass the limit (0 turns shedding off)."""
        limit = self._settings.max_backlog_images
        if limit and self._backlog + images > limit:
            metrics.UPLOADS_REJECTED.labels("overloaded").inc(images)
            raise OverloadedError(self._backlog, limit, self._retry_after_s())

    def _retry_after_s(self) -> int:
        # Roughly when the consumers will have worked the backlog down below the limit again.
        if math.isnan(self._drain_per_s) or self._drain_per_s <= 0:
            return 1
        excess = self._backlog - self._settings.max_backlog_images // 2
        return max(1, min(30, math.ceil(excess / self._drain_per_s)))

    def start(self) -> None:
        """Start measuring (no-op when shedding is off)."""
        if self._settings.max_backlog_images and self._task is None:
            self._task = asyncio.create_task(self._measure_forever(), name="backlog")

    async def stop(self) -> None:
        """Stop measuring and close the admin client; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._drop_admin()

    async def _measure_forever(self) -> None:
        interval = self._settings.backlog_check_interval_s
        failures = 0
        while True:
            before = self._backlog
            try:
                self._backlog = await asyncio.to_thread(self._measure)
            except Exception as e:
                # Fail open: a broker that is down is the publisher's to report (503), not a reason to shed.
                failures += 1
                log = logger.warning if failures in (1, 10) or failures % 100 == 0 else logger.debug
                log("backlog not measured (%d in a row): %s: %s", failures, type(e).__name__, e)
                await self._drop_admin()
            else:
                failures = 0
                drained = before - self._backlog
                self._drain_per_s = max(0.0, drained / interval) if drained > 0 else self._drain_per_s
                metrics.BACKLOG.set(self._backlog)
            await asyncio.sleep(interval)

    async def _drop_admin(self) -> None:
        # A fresh client next time, rather than one that keeps reconnecting to a broker that is gone.
        admin, self._admin = self._admin, None
        if admin is not None:
            await asyncio.to_thread(admin.close)

    def _measure(self) -> int:
        s = self._settings
        if self._admin is None:
            # kafka-python leaks sockets when a client's bootstrap fails, so only try once a port answers.
            if not any_port_open(s.kafka_bootstrap_servers):
                raise PipelineError(f"no broker listening at {s.kafka_bootstrap_servers}")
            self._admin = create_admin(s, "api-backlog")
        return sum(group_lag(self._admin, s.consumer_group_inference, s.topic_images).values())
