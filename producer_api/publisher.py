"""The API's one Kafka producer: connects in the background, publishes with acks, knows whether Kafka is up.

The producer (`pipeline_core.kafka_client.SharedProducer`, on either Kafka client) is thread-safe and its
`send()` only queues (topic metadata is fetched at connect time), so sends run on the event loop; the broker's
acks arrive on the client's thread and are handed to the loop with `call_soon_threadsafe`. Nothing here blocks
the loop: connecting and probing run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from pipeline_core import tracing
from pipeline_core.errors import BrokerUnavailableError, PipelineError, PublishError
from pipeline_core.events import FeedbackEvent, ImageEvent, encode_feedback, encode_image
from pipeline_core.kafka_client import SharedProducer
from pipeline_core.retry import Backoff, should_log
from producer_api import metrics
from producer_api.broker import Connection, any_port_open, connect, probe
from producer_api.settings import ApiSettings

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
CONNECT_BACKOFF = Backoff(first_s=0.25, max_s=5.0)  # the project's one retry policy, awaited here
OutRecord = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether uploads can be published now, and if not, why."""

    ok: bool
    reason: str


class _Acks:
    """Counts one request's broker acks on the event loop, resolving a single asyncio future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int) -> None:
        self.loop = loop
        self.pending = expected
        self.done: asyncio.Future[None] = loop.create_future()
        # A request that gave up early no longer awaits this; a late error must not be reported as unretrieved.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def on_delivered(self, error: Exception | None) -> None:  # on the Kafka client's thread
        if self.loop.is_closed():
            return
        if error is None:
            self.loop.call_soon_threadsafe(self._acked)
        else:
            self.loop.call_soon_threadsafe(self._failed, error)

    def _acked(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.done.done():
            self.done.set_result(None)

    def _failed(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def _encode(event: ImageEvent | FeedbackEvent, settings: ApiSettings) -> OutRecord:
    if isinstance(event, ImageEvent):
        return (settings.topic_images, *encode_image(event))
    return (settings.topic_feedback, *encode_feedback(event))


def _publish_span(topic: str, event: ImageEvent | FeedbackEvent) -> Span:
    """A producer span for one record, from its send to the broker's acknowledgement."""
    job_id = event.meta.job_id if isinstance(event, ImageEvent) else event.job_id
    attributes = {"messaging.system": "kafka", "messaging.destination.name": topic, "job.id": job_id or ""}
    return tracing.tracer().start_span(f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes)


ACK_PATIENCE_S = 1.0


class Publisher:
    """Owns the Kafka connection for the app's lifetime: `start()`, `publish()`, `readiness()`, `stop()`."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._connection: Connection | None = None
        self._state = Readiness(ok=False, reason="not connected to Kafka yet")
        self._checked_at = -math.inf
        self._connector: asyncio.Task[None] | None = None
        self._attempt: asyncio.Future[Connection] | None = None
        self._probe: asyncio.Task[Readiness] | None = None
        self._fatal: PipelineError | None = None
        self._stopped = False

    async def start(self) -> None:
        """Connect in the background; wait up to `broker_startup_wait_s`, then serve (not ready) if down."""
        self._connector = asyncio.create_task(self._connect_until_done(), name="kafka-connect")
        await asyncio.wait({self._connector}, timeout=self._settings.broker_startup_wait_s)
        if self._fatal is not None:
            raise self._fatal
        if self._connection is None:
            logger.warning(
                "Kafka at %s not reachable after %.1f s; serving anyway (not ready, uploads get 503) "
                "and still retrying",
                self._settings.kafka_bootstrap_servers,
                self._settings.broker_startup_wait_s,
            )

    async def _connect_until_done(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while self._connection is None:
            attempt += 1
            self._attempt = loop.run_in_executor(None, connect, self._settings)
            try:
                # shield: if stop() cancels this task, the attempt's thread runs on; stop() closes its result.
                self._connection = await asyncio.shield(self._attempt)
            except BrokerUnavailableError as e:
                self._attempt = None
                self._set_state(False, str(e))
                log = logger.warning if should_log(attempt) else logger.debug
                log("Kafka not reachable (attempt %d): %s; retrying", attempt, e)
                await asyncio.sleep(CONNECT_BACKOFF.delay(attempt))
            except PipelineError as e:
                self._attempt = None
                self._fatal = e
                self._set_state(False, f"cannot use Kafka: {e}")
                logger.error("cannot use Kafka, not retrying: %s", e)
                return
        self._attempt = None
        self._set_state(True, "ok")
        logger.info(
            "connected to Kafka at %s with %s after %d attempt(s)",
            self._settings.kafka_bootstrap_servers,
            self._settings.kafka_client,
            attempt,
        )

    def _set_state(self, ok: bool, reason: str) -> None:
        if ok != self._state.ok:
            logger.log(
                logging.INFO if ok else logging.WARNING,
                "Kafka %s: %s",
                "ready" if ok else "NOT ready",
                reason,
            )
        self._state = Readiness(ok, reason)
        self._checked_at = time.monotonic()

    async def readiness(self) -> Readiness:
        """Whether Kafka answers; a check is reused for `ready_cache_s`, and waited for at most 2 s."""
        if self._connection is None or self._stopped:
            return self._state
        if time.monotonic() - self._checked_at >= self._settings.ready_cache_s:
            self._start_probe()
        if self._probe is None or self._probe.done():
            return self._state
        try:
            return await asyncio.wait_for(asyncio.shield(self._probe), PROBE_TIMEOUT_S)
        except TimeoutError:
            self._set_state(False, f"Kafka did not answer within {PROBE_TIMEOUT_S:.0f} s")
            return self._state

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._run_probe(), name="kafka-probe")

    async def _run_probe(self) -> Readiness:
        assert self._connection is not None  # only started once connected
        try:
            await asyncio.to_thread(probe, self._connection, self._settings.kafka_bootstrap_servers)
        except BrokerUnavailableError as e:
            self._set_state(False, str(e))
        else:
            self._set_state(True, "ok")
        return self._state

    def _producer(self) -> SharedProducer:
        """The producer, or `PublishError` at once when Kafka is known to be down (the route answers 503)."""
        if self._connection is None or self._stopped:
            raise PublishError(self._state.reason)
        if not self._state.ok:
            if time.monotonic() - self._checked_at >= self._settings.ready_cache_s:
                self._start_probe()  # so the state recovers even when nobody polls /readyz
            raise PublishError(self._state.reason)
        return self._connection.producer

    async def publish(self, events: Sequence[ImageEvent | FeedbackEvent]) -> None:
        """Send every event and return once the broker acknowledged all of them; `PublishError` otherwise."""
        producer = self._producer()
        records = [_encode(event, self._settings) for event in events]
        # Each record's own span, in the request's trace; its context goes in the record's headers, so that the
        # consumer's spans for this image continue the same trace.
        spans = [_publish_span(topic, event) for (topic, *_), event in zip(records, events, strict=True)]
        acks = _Acks(asyncio.get_running_loop(), len(records))
        started = time.perf_counter()
        failure: str | None = None
        try:
            for (topic, key, value, headers), span in zip(records, spans, strict=True):
                traced = [*headers, *tracing.trace_headers(trace.set_span_in_context(span))]
                producer.send(topic, key, value, traced, acks.on_delivered)
            await self._await_acks(acks)
        except TimeoutError as e:
            self._set_state(False, f"no broker ack within {self._settings.publish_timeout_s:.0f} s")
            failure = self._state.reason
            raise PublishError(self._state.reason) from e
        except (PipelineError, KafkaError) as e:  # sent and refused, or not even queued
            self._set_state(False, f"publish failed: {e}")
            failure = self._state.reason
            raise PublishError(self._state.reason) from e
        finally:  # also when the request is cancelled meanwhile (its client went away)
            for span in spans:
                if failure is not None:
                    span.set_status(trace.StatusCode.ERROR, failure)
                span.end()
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)

    async def _await_acks(self, acks: _Acks) -> None:
        """Wait for the acks; if none came within a second and no broker even listens, fail now, not at the
        end of `publish_timeout_s` (a stopped broker is answered 503 in about a second)."""
        async with asyncio.timeout(self._settings.publish_timeout_s):
            done, _ = await asyncio.wait({acks.done}, timeout=ACK_PATIENCE_S)
            if not done and not await asyncio.to_thread(
                any_port_open, self._settings.kafka_bootstrap_servers
            ):
                self._set_state(False, f"no broker listening at {self._settings.kafka_bootstrap_servers}")
                raise PublishError(self._state.reason)
            await acks.done

    async def stop(self) -> None:
        """Stop connecting, let a probe finish, flush and close the producer. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            await asyncio.wait({self._connector})
        await self._close_late_attempt()
        if self._probe is not None and not self._probe.done():
            await asyncio.wait({self._probe}, timeout=PROBE_TIMEOUT_S)
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.to_thread(connection.close, self._settings.shutdown_timeout_s)
            logger.info("Kafka producer flushed and closed")
        self._state = Readiness(ok=False, reason="shutting down")

    async def _close_late_attempt(self) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        try:
            late = await attempt
        except PipelineError as e:
            logger.info("connection attempt in flight at shutdown failed: %s", e)
            return
        await asyncio.to_thread(late.close, 0)
