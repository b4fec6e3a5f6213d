"""Admission control: shed uploads with 429 before accepted images would wait too long for a consumer.

Two measures, read in a worker thread every `BACKLOG_CHECK_INTERVAL_S` from the inference group's offsets:
the backlog (records on the images topic not yet committed by a consumer) and the group's throughput (how
fast its committed offsets advance while it has work). An upload is refused when the images it brings would
wait longer than `MAX_QUEUE_WAIT_S` behind the backlog at that throughput, or when the backlog would pass
`MAX_BACKLOG_IMAGES` (the bound while the throughput is not known yet). With at-least-once, the images finished
in the last COMMIT_INTERVAL_MS but not yet committed are not counted as waiting. Uploads accepted since the last
measure count too, so a burst between two measures cannot overshoot. Every image already accepted still gets
its result; what is refused gets `Retry-After` for when the wait should be back under the limit.
"""

from __future__ import annotations

import asyncio
import logging
import math

from pipeline_core.clients import create_admin_client
from pipeline_core.errors import PipelineError
from pipeline_core.kafka_client import AdminClient
from pipeline_core.lag import group_offsets
from producer_api import metrics
from producer_api.broker import any_port_open
from producer_api.settings import ApiSettings

logger = logging.getLogger(__name__)


class OverloadedError(PipelineError):
    """Accepted images would wait too long for a consumer; the client should retry after `retry_after_s`."""

    retriable = True

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(f"{reason}; retry later")
        self.retry_after_s = retry_after_s


# The throughput is the rate over the last few busy measures, and the slowly decaying peak of that rate.
_WINDOW = 8
_MIN_WINDOW_S = 1.0
_DECAY = 0.99
MAX_RETRY_AFTER_S = 30


class Admission:
    """Keeps the backlog and throughput up to date in the background; `check()` refuses uploads that would
    wait too long."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._backlog = 0
        self._accepted_since_measure = 0
        self._throughput = math.nan  # images/s the group works off while busy; nan until seen
        self._busy: list[tuple[float, int]] = []  # (seconds, records committed) of the last busy measures
        self._admin: AdminClient | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Images accepted but not yet classified and committed, as last measured plus accepted since."""
        return self._backlog + self._accepted_since_measure

    @property
    def throughput(self) -> float:
        """Images per second the consumers work off while they have a backlog (nan until measured)."""
        return self._throughput

    def expected_wait_s(self, images: int) -> float:
        """How long the last of `images` more would wait before a consumer takes it: the images ahead of it
        divided by the throughput (nan while the throughput is unknown).

        Up to ADMISSION_MIN_BACKLOG images waiting (this upload's included) count as no wait, however slow
        the consumers last were: that many keep every consumer busy, and the throughput is learnt only from
        a backlog that keeps them busy. Judged below it, a low estimate would shed the very uploads that
        keep the consumers busy; the estimate would then fall to what was admitted, and shed more (seen in
        the benchmark: a third of the throughput lost), or, after one slow spell, shed every multi-image
        upload of an idle system for ever (seen in CI).
        """
        waiting = self._waiting(self.backlog)
        if waiting <= 0 or waiting + images <= self._settings.admission_min_backlog:
            return 0.0
        ahead = waiting + images - 1
        return ahead / self._throughput if self._throughput > 0 else math.nan

    def _waiting(self, backlog: int) -> int:
        """The images of a measured backlog still to be classified: not those finished but not yet committed.

        With at-least-once the consumers commit at most every COMMIT_INTERVAL_MS, so the committed offsets
        trail finished work by up to that interval's worth of images. Counted as waiting, that trail eats
        into ADMISSION_MIN_BACKLOG and the wait limit, and can hold the consumers below their capacity: in
        `make bench` (2026-12-03) an at-least-once system shed more than it accepted at 45 img/s, half its
        capacity, with a round trip of 170 ms. The whole interval's worth is taken off, though the trail is
        half that on average: the error admits up to one interval of work more than the limit says, which
        MAX_BACKLOG_IMAGES still bounds. Exactly-once commits the offsets with each poll's outputs.
        """
        s = self._settings
        if s.processing_guarantee != "at-least-once" or not self._throughput > 0:
            return backlog
        return max(0, backlog - math.floor(self._throughput * s.commit_interval_ms / 1000))

    def check(self, images: int) -> None:
        """Raise `OverloadedError` if admitting `images` more would pass the wait or backlog limit."""
        settings = self._settings
        if not settings.max_backlog_images and not settings.max_queue_wait_s:
            return
        waiting = self.backlog + images
        wait = self.expected_wait_s(images)
        if settings.max_queue_wait_s and wait > settings.max_queue_wait_s:
            reason = f"{waiting} images would wait {wait:.1f} s for a consumer (limit {settings.max_queue_wait_s} s)"
            self._refuse(images, reason, wait - settings.max_queue_wait_s)
        if settings.max_backlog_images and waiting > settings.max_backlog_images:
            reason = (
                f"{waiting} images would be waiting to be classified (limit {settings.max_backlog_images})"
            )
            excess = waiting - settings.max_backlog_images // 2
            self._refuse(images, reason, excess / self._throughput if self._throughput > 0 else 1.0)

    def admitted(self, images: int) -> None:
        """Count images accepted since the last measure (they are in the next one)."""
        self._accepted_since_measure += images

    def _refuse(self, images: int, reason: str, seconds: float) -> None:
        metrics.UPLOADS_REJECTED.labels("overloaded").inc(images)
        retry_after = max(1, min(MAX_RETRY_AFTER_S, math.ceil(seconds)))
        raise OverloadedError(reason, retry_after)

    def start(self) -> None:
        """Start measuring (no-op when shedding is off)."""
        settings = self._settings
        if (settings.max_backlog_images or settings.max_queue_wait_s) and self._task is None:
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
        loop = asyncio.get_running_loop()
        failures = 0
        previous: tuple[float, int, int] | None = None  # (time, committed, backlog) of the last measure
        while True:
            try:
                committed, backlog = await asyncio.to_thread(self._measure)
            except Exception as e:
                # Fail open: a broker that is down is the publisher's to report (503), not a reason to shed.
                failures += 1
                log = logger.warning if failures in (1, 10) or failures % 100 == 0 else logger.debug
                log("backlog not measured (%d in a row): %s: %s", failures, type(e).__name__, e)
                await self._drop_admin()
                previous = None
            else:
                failures = 0
                now = loop.time()
                if previous is not None:
                    self._learn_throughput(now - previous[0], committed - previous[1], previous[2])
                previous = (now, committed, backlog)
                self._backlog, self._accepted_since_measure = backlog, 0
                metrics.BACKLOG.set(backlog)
            await asyncio.sleep(interval)

    def _learn_throughput(self, elapsed_s: float, done: int, backlog_before: int) -> None:
        """Fold one measure into the throughput: the rate over the last busy seconds, and the peak of those
        rates, decaying slowly, as what the consumers can do.

        Only intervals that began with enough work to keep every consumer busy (ADMISSION_MIN_BACKLOG) count:
        below it, progress says how fast images arrived, not how fast they can go. The rate is taken over
        several intervals because committed offsets advance in steps (a transaction's worth at a time), and the
        peak because a light load shows less than the consumers can do (they batch what waits): the estimate
        stays near the capacity last seen, and falls if the consumers stay slower (a half-life of about a
        minute of busy measures).
        """
        if elapsed_s <= 0 or done < 0:
            return
        if self._waiting(backlog_before) < max(1, self._settings.admission_min_backlog):
            return
        self._busy.append((elapsed_s, done))
        del self._busy[:-_WINDOW]
        window_s = sum(elapsed for elapsed, _ in self._busy)
        # Not even a first estimate from less: one quarter-second measure holds zero or one commit step, and
        # a first estimate that low held an at-least-once system's admission at half its capacity.
        if window_s < _MIN_WINDOW_S:
            return
        rate = sum(count for _, count in self._busy) / window_s
        if math.isnan(self._throughput):
            self._throughput = rate
        else:
            self._throughput = max(rate, self._throughput * _DECAY)

    async def _drop_admin(self) -> None:
        # A fresh client next time, rather than one that keeps reconnecting to a broker that is gone.
        admin, self._admin = self._admin, None
        if admin is not None:
            await asyncio.to_thread(admin.close)

    def _measure(self) -> tuple[int, int]:
        """(committed records summed over partitions, backlog)."""
        s = self._settings
        if self._admin is None:
            # kafka-python leaks sockets when a client's bootstrap fails, so only try once a port answers.
            if not any_port_open(s.kafka_bootstrap_servers):
                raise PipelineError(f"no broker listening at {s.kafka_bootstrap_servers}")
            self._admin = create_admin_client(s, "api-backlog")
        offsets = group_offsets(self._admin, s.consumer_group_inference, s.topic_images).values()
        return sum(done for done, _end in offsets), sum(max(0, end - done) for done, end in offsets)
