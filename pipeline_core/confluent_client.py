"""`ConsumerClient` and `ProducerClient` on confluent-kafka (librdkafka), with its errors turned into the
project's own.

librdkafka does its protocol and network work in C, on threads of its own (in the benchmark it took 3-6 ms of
CPU per image out of the services and the broker: docs/benchmarks.md), and bounds every transactional call
with a timeout of ours. What differs from kafka-python
and is handled here:

- It never fails at creation: a broker that is away, a refused password or an untrusted certificate show up
  later, as error events. They are collected (`_Errors`) and raised from the next call the runtime makes, so
  that a wrong setting ends the run with its name, as with kafka-python, rather than a consumer waiting for
  ever.
- A record's errors come as messages of their own (`Message.error()`), never as an exception from `consume`.
- Its log lines go to Python's logging (`kafka.librdkafka`), not to stderr.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # the stubs do not re-export them
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pipeline_core.errors import (
    BrokerUnavailableError,
    CommitRefusedError,
    ConfigurationError,
    FencedError,
    KafkaAccessError,
    PipelineError,
    PublishError,
    RecordRefusedError,
    TransactionError,
)
from pipeline_core.events import RawRecord, Record
from pipeline_core.kafka_client import (
    OnDelivered,
    OutRecord,
    RebalanceListener,
    TopicDefinition,
    TopicPartition,
    first_offsets,
)
from pipeline_core.logs import RepeatFilter

logger = logging.getLogger(__name__)
librdkafka_logger = logging.getLogger("kafka.librdkafka")
librdkafka_logger.addFilter(RepeatFilter())  # its reconnect loop logs every attempt
_Client = TypeVar("_Client", Consumer, Producer)

COMMITTED_TIMEOUT_S = 5.0  # reading committed offsets waits for pending transactional ones; bounded
ACCESS_ERROR_PERSISTS_S = 5.0  # see _Errors
# After the group's offsets could not be read for the lag gauge, it goes without them this long: lag() runs after
# every batch and must not wait on a coordinator that is away.
LAG_COMMITTED_RETRY_S = 30.0

# Refused credentials or certificates: a setting to change, never a broker to wait for.
_CREDENTIALS = {KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION}
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}
# A newer producer of this transactional id exists.
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
# The group moved on: these offsets are no longer this member's to commit.
_COMMIT_REFUSED = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
}
# librdkafka refuses a record over message.max.bytes at produce() with the broker's own code.
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}


def _error_of(e: BaseException) -> KafkaError | None:
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        return e.args[0]
    return None


def translate_error(error: KafkaError, doing: str) -> PipelineError:
    """One librdkafka error as the project's: refused access is a configuration error, the rest a broker that
    may come back."""
    code = error.code()
    if code in _CREDENTIALS:
        return KafkaAccessError.credentials_refused(doing, error.str())
    if code == KafkaError._SSL:
        return KafkaAccessError(
            f"{doing}: TLS with the broker failed ({error.str()}): check KAFKA_SSL_CAFILE (the CA that signed "
            "the brokers' certificates) and KAFKA_SECURITY_PROTOCOL"
        )
    if code in _DENIED:
        return KafkaAccessError.acl_missing(doing, error.name())
    # Fatal errors (a fenced idempotent producer) cannot pass on a retry of this client; everything else is a
    # broker that is away or busy, which the runtime waits out.
    return BrokerUnavailableError(f"{doing}: {error.name()}: {error.str()}", retriable=not error.fatal())


def translate(e: BaseException, doing: str) -> PipelineError:
    """A confluent-kafka exception as the project's (see `translate_error`)."""
    error = _error_of(e)
    if error is None:
        return BrokerUnavailableError(f"{doing}: {type(e).__name__}: {e}", retriable=True)
    return translate_error(error, doing)


class _Errors:
    """Error events librdkafka reports from its own threads (a broker down, a refused password).

    Until the client has had one answer from the cluster, an access error (credentials, TLS) is raised from
    its next call once it has been reported for `ACCESS_ERROR_PERSISTS_S`: a refused password is refused at
    every reconnect, within a second, so it persists, and the service stops naming the setting. After one
    answer, the settings were right, and an access error is a broker restarting (librdkafka reports a
    connection dropped during the TLS or SASL handshake as an SSL or authentication failure): it must not stop
    a consumer, so it is only logged. Everything is logged once a minute of each kind: a broker that is away is
    the runtime's to wait out, and librdkafka reconnects by itself.
    """

    def __init__(self, role: str) -> None:
        self._role = role
        self._lock = threading.Lock()
        self._access: PipelineError | None = None
        self._access_since = 0.0
        self._answered = False
        self._logged: dict[int, float] = {}

    def __call__(self, error: KafkaError) -> None:
        translated = translate_error(error, self._role)
        now = time.monotonic()
        if isinstance(translated, KafkaAccessError) and not self._answered:
            with self._lock:
                if self._access is None:
                    self._access, self._access_since = translated, now
        if now - self._logged.get(error.code(), -60.0) >= 60.0:  # once a minute of each kind: no log floods
            self._logged[error.code()] = now
            logger.warning("%s: %s", self._role, error.str())

    def succeeded(self) -> None:
        """A call got an answer from the cluster: the settings are right, and access errors pass from now on."""
        with self._lock:
            self._answered = True
            self._access = None

    def pending(self) -> PipelineError | None:
        """The access error reported since the last answer, if any (an admin request that failed says it)."""
        with self._lock:
            return self._access

    def raise_pending(self) -> None:
        """Raise the access error that has persisted, if any. (A fatal error comes back from the client's own
        next call.)"""
        with self._lock:
            error = self._access
            if error is None or time.monotonic() - self._access_since < ACCESS_ERROR_PERSISTS_S:
                return
            self._access = None
        raise error


def _create(kind: Callable[[dict[str, Any]], _Client], config: dict[str, Any]) -> _Client:
    try:
        return kind(config)
    except KafkaException as e:  # a configuration librdkafka refuses (it connects later, never here)
        raise ConfigurationError(f"Kafka client settings refused: {e.args[0].str() if e.args else e}") from e


def _close_quietly(producer: Producer) -> None:
    """Drop what is queued, then close: confluent-kafka's close() flushes without a time limit."""
    try:
        producer.purge()
        producer.poll(0)  # the purged records' callbacks: their senders learn they failed
    except KafkaException as e:
        logger.debug("producer purge at close: %s", e)
    try:
        producer.close()
    except Exception as e:  # KafkaException, or SystemError from confluent-kafka 2.16 on a fenced producer
        logger.debug("producer close: %s", e)


def _membership(group_metadata: object) -> tuple[int, str] | None:
    """(generation, member id) of librdkafka's serialised group metadata, version 2 (what
    `Consumer.consumer_group_metadata()` returns in confluent-kafka 2.x); None for a form not known here, which
    is then left to the coordinator."""
    if not isinstance(group_metadata, bytes) or not group_metadata.startswith(b"CGMDv2:"):
        return None
    body = group_metadata[len(b"CGMDv2:") :]
    if len(body) < 6:
        return None
    generation = int.from_bytes(body[:4], sys.byteorder, signed=True)  # written in the host's byte order
    fields = body[4:].split(b"\0")
    if len(fields) < 3:
        return None
    return generation, fields[1].decode("utf-8", "replace")


def _ours(partitions: Iterable[KafkaTopicPartition]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in partitions}


def _theirs(tp: TopicPartition, offset: int | None = None) -> KafkaTopicPartition:
    return KafkaTopicPartition(tp.topic, tp.partition) if offset is None else KafkaTopicPartition(*tp, offset)


def _record(m: Message) -> RawRecord:
    try:
        # Always (str, bytes | None) pairs when read (the stubs type them as a produce() argument).
        headers = cast("tuple[tuple[str, bytes | None], ...]", tuple(m.headers() or ()))
    except Exception as e:
        # A header key that is not UTF-8 (the broker takes any bytes): confluent-kafka 2.16 raises SystemError
        # for it. The record stays in the stream, without the headers this client cannot give: its decoder then
        # fails it like any unreadable record, and the partition goes on.
        logger.warning("%s[%d]@%d: headers not readable (%s)", m.topic(), m.partition(), m.offset(), e)
        headers = ()
    return Record(m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), m.value(), headers)


class ConfluentConsumer:
    """A `ConsumerClient` around one confluent-kafka `Consumer` (made by `pipeline_core.clients`)."""

    def __init__(self, config: dict[str, Any], role: str) -> None:
        self._errors = _Errors(role)
        self._consumer = _create(Consumer, config | {"error_cb": self._errors, "logger": librdkafka_logger})
        # Where a partition will be read from while librdkafka does not know (see `_positions`).
        self._sought: dict[TopicPartition, int] = {}
        self._lag_committed_failed_at = -math.inf
        self._subscribed = False
        self._revoked_in_poll: set[TopicPartition] = set()
        # Seeks that must happen before the next fetch is handed over: a rewind of messages this client took
        # from librdkafka but did not hand over, which failed when tried (see `_seek_or_defer`).
        self._pending_seeks: dict[TopicPartition, int] = {}
        self._listener_error: BaseException | None = None

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._subscribed = True

        def assigned(_consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
            for tp in _ours(partitions):
                self._sought.pop(tp, None)
            self._call_listener(listener.on_assigned, _ours(partitions))

        def revoked(_consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
            for tp in _ours(partitions):
                self._sought.pop(tp, None)
                self._pending_seeks.pop(tp, None)  # its next owner starts from the committed offset
            self._revoked_in_poll |= _ours(partitions)
            self._call_listener(listener.on_revoked, _ours(partitions))

        # A lost assignment (the member was evicted) is a revocation for the runtime: nothing in hand is
        # committed under it, whatever the next owner does.
        self._consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def _call_listener(
        self, callback: Callable[[set[TopicPartition]], None], partitions: set[TopicPartition]
    ) -> None:
        """A rebalance callback runs inside librdkafka's poll or consume; if it raised there, confluent-kafka
        would destroy the messages that call had taken, past which librdkafka's position already is: they would
        never be read. So the error is kept, and raised by `poll` once those messages are sought back."""
        try:
            callback(partitions)
        except BaseException as e:
            logger.error("rebalance listener failed: %s", e)
            self._listener_error = self._listener_error or e

    def topics_known(self, topics: Sequence[str]) -> bool:
        if not self._subscribed:
            # librdkafka hands error events over only inside poll; not subscribed yet, a poll returns no record.
            self._consumer.poll(0)
        self._errors.raise_pending()
        try:
            metadata = self._consumer.list_topics(timeout=1.0)
        except KafkaException as e:
            self._errors.raise_pending()
            logger.debug("metadata not read: %s", e)
            return False
        self._errors.succeeded()
        return all(t in metadata.topics and metadata.topics[t].partitions for t in topics)

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]:
        self._errors.raise_pending()
        self._seek_pending()
        self._revoked_in_poll.clear()
        try:
            # consume(n, timeout) waits until it has n messages or the timeout passed: at a light load every
            # poll would wait the whole BATCH_MAX_WAIT_MS for a full batch (seen: 450 ms added at 10% load).
            # As kafka-python's poll does, wait only for the first, then take what is already fetched.
            first = self._consumer.poll(timeout_s)
        except KafkaException as e:
            raise translate(e, "poll") from e
        messages = [first] if first is not None else []
        if first is not None and max_records > 1:
            try:
                messages += self._consumer.consume(num_messages=max_records - 1, timeout=0)
            except KafkaException as e:  # the first is in hand: hand it over, the rest comes next time
                logger.debug("poll: %s", e)
        if messages:
            self._errors.succeeded()
        if self._revoked_in_poll:
            messages = self._drop_revoked(messages)
        if (
            self._pending_seeks
        ):  # not sought back yet: what came of those partitions comes again after the seek
            messages = [m for m in messages if (m.topic(), m.partition()) not in self._pending_seeks]
        if self._listener_error is not None:
            failed, self._listener_error = self._listener_error, None
            self._rewind([], messages)
            raise failed
        records: list[RawRecord] = []
        for n, m in enumerate(messages):
            try:
                error = m.error()
                if error is None:
                    records.append(_record(m))
                    continue
                translated = translate_error(error, f"poll of {m.topic()}[{m.partition()}]")
                if isinstance(translated, KafkaAccessError) or not translated.retriable:
                    raise translated
            except BaseException:
                # consume() has moved past every message it returned: whatever is not handed over is fetched
                # again, from the first of them, or it would be skipped.
                self._rewind(records, messages[n:])
                raise
            # A partition-level event (a leader moving, a topic not yet known): librdkafka goes on by itself.
            logger.debug("%s", translated)
        return records

    def _drop_revoked(self, messages: list[Message]) -> list[Message]:
        """The messages of partitions that no revocation during this poll touched.

        The rebalance callbacks run inside poll and consume: a message taken by the first call may be of a
        partition the second revoked. It is no longer this member's (the runtime holds nothing of revoked
        partitions); its new owner reads it from the committed offset. But an eager rebalance revokes every
        partition and may assign one straight back, within the same poll: then the dropped messages may be ones
        fetched for the new assignment, and librdkafka's position is past them. That partition is sought back to
        the first message dropped, or those records would be skipped, and committed past, unprocessed (seen
        under a promotion: a record that arrived just after such a rebalance had no prediction).
        """
        kept: list[Message] = []
        dropped: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic() or "", m.partition() or 0)
            if tp not in self._revoked_in_poll:
                kept.append(m)
            elif m.error() is None and (m.offset() or 0) >= 0:
                dropped[tp] = min(dropped.get(tp, m.offset() or 0), m.offset() or 0)
        if dropped:
            owned = _ours(self._consumer.assignment())
            for tp, offset in dropped.items():
                if tp in owned:
                    logger.info(
                        "%s[%d]: assigned again within one poll; reading it again from %d", *tp, offset
                    )
                    self._seek_or_defer(tp, offset)
        return kept

    def _rewind(self, records: list[RawRecord], messages: Sequence[Message]) -> None:
        unread: list[RawRecord] = [
            Record(m.topic() or "", m.partition() or 0, m.offset() or 0, None, None, ())
            for m in messages
            if m.error() is None and (m.offset() or 0) >= 0
        ]
        first = first_offsets([*records, *unread])
        for tp, offset in first.items():
            self._seek_or_defer(tp, offset)

    def _seek_or_defer(self, tp: TopicPartition, offset: int) -> None:
        """Seek back to messages taken from librdkafka and not handed over (its position is past them). If the
        seek fails now (a partition not fetching yet: `_STATE`), it is tried again at each poll, which meanwhile
        hands over nothing of that partition: raising here instead would lose the messages of the other
        partitions that this poll does hand over, and skipping it would lose these. The polls go on, so the
        member still takes part in rebalances (a revocation drops the pending seek: the next owner starts
        from the committed offset)."""
        try:
            self.seek(tp, offset)
        except PipelineError as e:
            logger.info(
                "%s[%d]: not sought back to %d yet (%s); trying again before the next poll", *tp, offset, e
            )
            self._pending_seeks[tp] = min(offset, self._pending_seeks.get(tp, offset))

    def _seek_pending(self) -> None:
        for tp, offset in sorted(self._pending_seeks.items()):
            try:
                self.seek(tp, offset)
            except PipelineError as e:
                logger.debug("%s[%d] still not sought back to %d: %s", *tp, offset, e)
                continue
            self._pending_seeks.pop(tp, None)

    def _positions(
        self,
        partitions: Sequence[TopicPartition],
        ask_committed: bool = True,
        committed_timeout_s: float = COMMITTED_TIMEOUT_S,
    ) -> dict[TopicPartition, int]:
        """The next offset each partition will be read from. librdkafka knows it once a fetch came back for the
        partition (past transaction markers, too), and forgets it at a seek; until then it is where the
        partition was sought, or the group's committed offset (asked once), or the start of the log."""
        positions = {
            TopicPartition(tp.topic, tp.partition): tp.offset
            for tp in self._consumer.position([_theirs(tp) for tp in partitions])
        }
        for tp, offset in positions.items():
            if offset < 0 and tp in self._sought:
                positions[tp] = self._sought[tp]
        unknown = [tp for tp, offset in positions.items() if offset < 0]
        if unknown and not ask_committed:
            return {tp: offset for tp, offset in positions.items() if offset >= 0}
        answered = self.committed(unknown, timeout_s=committed_timeout_s) if unknown else {}
        for tp, committed in answered.items():
            start = committed
            if start is None:
                start = max(0, self._consumer.get_watermark_offsets(_theirs(tp), cached=True)[0])
            self._sought[tp] = positions[tp] = start
        return positions

    def readable(self, timeout_s: float) -> dict[TopicPartition, int]:
        partitions = sorted(self.assignment())
        deadline = (
            time.monotonic() + timeout_s
        )  # one deadline for the whole question: the runtime waits on it
        try:
            positions = self._positions(partitions)
            readable = {}
            for tp in partitions:
                left = max(0.1, deadline - time.monotonic())
                # The high watermark asked of the leader; for a read_committed consumer, the last stable offset.
                _low, high = self._consumer.get_watermark_offsets(_theirs(tp), timeout=left, cached=False)
                readable[tp] = max(0, high - positions[tp])
        except KafkaException as e:
            raise translate(e, "reading end offsets") from e
        return readable

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        # librdkafka's synchronous commit takes no timeout: without a coordinator it waits for one up to
        # session.timeout.ms, then fails; a request in flight is bounded by socket.timeout.ms. So `timeout_s` is
        # not kept to the second, but the wait is bounded (about 20 s at most with the factory's settings).
        if not offsets:
            return
        try:
            results = self._consumer.commit(
                offsets=[_theirs(tp, o) for tp, o in offsets.items()], asynchronous=False
            )
        except KafkaException as e:
            error = _error_of(e)
            if error is not None and error.code() in _COMMIT_REFUSED:
                raise CommitRefusedError(f"offset commit refused: {error.name()}: {error.str()}") from e
            raise translate(e, "offset commit") from e
        for tp in results or ():
            if tp.error is not None:
                if tp.error.code() in _COMMIT_REFUSED:
                    raise CommitRefusedError(
                        f"offset commit refused for {tp.topic}[{tp.partition}]: {tp.error}"
                    )
                raise translate_error(tp.error, f"offset commit of {tp.topic}[{tp.partition}]")

    def committed(
        self, partitions: Iterable[TopicPartition], timeout_s: float = COMMITTED_TIMEOUT_S
    ) -> dict[TopicPartition, int | None]:
        asked = [_theirs(tp) for tp in partitions]
        if not asked:
            return {}
        try:
            answered = self._consumer.committed(asked, timeout=timeout_s)
        except KafkaException as e:
            raise translate(e, "reading committed offsets") from e
        for tp in answered:
            # An error of one partition (e.g. UNSTABLE_OFFSET_COMMIT while a transaction is pending) also comes
            # back as "no offset": taken as never committed, the partition would be read from its start.
            if tp.error is not None:
                raise translate_error(tp.error, f"reading the committed offset of {tp.topic}[{tp.partition}]")
        return {
            TopicPartition(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in answered
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(_theirs(tp, offset))
        except KafkaException as e:
            if tp not in self.assignment():  # the next owner starts from the committed offset
                logger.debug("%s[%d] not sought to %d: %s", tp.topic, tp.partition, offset, e)
                return
            # Still ours (e.g. not fetching yet): skipping the rewind would skip records; the runtime retries.
            raise translate(e, f"seeking {tp.topic}[{tp.partition}] to {offset}") from e
        if offset >= 0:
            self._sought[tp] = offset
        else:  # the start of the log: learnt again when asked
            self._sought.pop(tp, None)

    def seek_to_start(self, tp: TopicPartition) -> None:
        self.seek(tp, OFFSET_BEGINNING)

    def assignment(self) -> set[TopicPartition]:
        return _ours(self._consumer.assignment())

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def lag(self) -> dict[TopicPartition, int]:
        # The watermarks of the last fetch response and the position: known locally (but for a partition not
        # fetched from yet, whose committed offset is asked once).
        lag: dict[TopicPartition, int] = {}
        ask = time.monotonic() - self._lag_committed_failed_at >= LAG_COMMITTED_RETRY_S
        try:
            # lag() runs after every batch: its one question to the coordinator is kept short.
            positions = self._positions(sorted(self.assignment()), ask_committed=ask, committed_timeout_s=1.0)
            for tp, position in positions.items():
                _low, high = self._consumer.get_watermark_offsets(_theirs(tp), cached=True)
                if high >= 0:
                    lag[tp] = max(0, high - position)
        except (KafkaException, PipelineError) as e:
            self._lag_committed_failed_at = time.monotonic()
            logger.debug("lag not read: %s", e)
        return lag

    def close(self) -> None:
        try:
            self._consumer.close()  # leaves the group at once; commits nothing (auto-commit is off)
        except (KafkaException, RuntimeError) as e:  # RuntimeError: already closed
            logger.debug("consumer close: %s", e)


class ConfluentProducer:
    """A `ProducerClient` around one confluent-kafka `Producer`: `acks=all`, idempotent, and transactional when
    its config has a `transactional.id` (initialised by the factory)."""

    def __init__(self, config: dict[str, Any], role: str) -> None:
        self._errors = _Errors(role)
        self._transactional_id = config.get("transactional.id")
        self._config = config | {"error_cb": self._errors, "logger": librdkafka_logger}
        self._producer = _create(Producer, self._config)
        self._deliveries: list[tuple[OutRecord, list[KafkaError | None]]] = []

    @property
    def producer(self) -> Producer:
        """The confluent-kafka producer (for the factory's `init_transactions`)."""
        return self._producer

    @property
    def transactional(self) -> bool:
        return bool(self._transactional_id)

    def send(self, record: OutRecord) -> None:
        outcome: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            outcome.append(error)

        while True:
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers),
                    on_delivery=delivered,
                )
                break
            except BufferError:  # the local queue is full: serve deliveries until there is room
                try:
                    self._producer.poll(0.1)
                except KafkaException as e:
                    raise self._after_fatal(e) from e
            except KafkaException as e:
                error = _error_of(e)
                if error is not None and error.code() in _TOO_LARGE:
                    raise RecordRefusedError(
                        f"record of {record.size} bytes is too large: {error.str()}", [record]
                    ) from e
                if error is not None and error.code() in _FENCED:
                    raise self._fenced(error) from e
                if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
                    raise self._after_fatal(e) from e
                translated = translate(e, "send")
                raise PublishError(
                    f"send to {record.topic} failed: {translated}", retriable=translated.retriable
                ) from e
            except (TypeError, ValueError) as e:
                raise RecordRefusedError(f"record refused by the client: {e}", [record]) from e
        self._deliveries.append((record, outcome))

    def flush(self, timeout_s: float) -> None:
        deliveries, self._deliveries = self._deliveries, []
        try:
            left = self._producer.flush(timeout_s)
        except KafkaException as e:  # a fatal error, e.g. fenced: raised by flush, not by the deliveries
            error = _error_of(e)
            if error is not None and error.code() in _FENCED:
                raise self._fenced(error) from e
            raise self._after_fatal(e) from e
        # An empty outcome: not delivered within the timeout (still queued, or in flight).
        failed = [(r, outcome[0] if outcome else None) for r, outcome in deliveries if outcome != [None]]
        if not failed:
            if deliveries:
                self._errors.succeeded()
            return
        self._errors.raise_pending()
        causes = [e for _, e in failed if e is not None]
        fenced = next((e for e in causes if e.code() in _FENCED), None)
        if self.transactional and fenced is not None:
            raise self._fenced(fenced)
        denied = next((e for e in causes if e.code() in _DENIED), None)
        if denied is not None:
            raise translate_error(denied, "producing")
        # A record the broker refuses for its size will be refused every time; anything else may pass later.
        refused = [r for r, e in failed if e is not None and e.code() in _TOO_LARGE]
        if refused:
            raise RecordRefusedError(f"{len(refused)} records too large for their topic", refused)
        record, cause = failed[0]
        reason = (
            cause.str() if cause is not None else f"not delivered within {timeout_s:.0f} s ({left} queued)"
        )
        raise PublishError(
            f"{len(failed)} of {len(deliveries)} records not acknowledged, e.g. to {record.topic}: {reason}"
        )

    def _after_fatal(self, e: KafkaException) -> PipelineError:
        """A fatal error leaves a librdkafka producer unusable. A transactional one is replaced by the runtime
        (TransactionError); a plain one is replaced here, and the batch sent again through the new one."""
        if self.transactional:
            return TransactionError(f"producer failed: {translate(e, 'flush')}")
        old, self._producer = self._producer, _create(Producer, self._config)
        _close_quietly(old)
        return PublishError(f"producer failed and was replaced: {translate(e, 'flush')}", retriable=True)

    def _fenced(self, error: KafkaError) -> FencedError:
        return FencedError(
            f"producer fenced: another process took over transactional id {self._transactional_id} "
            f"({error.str()}); CONSUMER_INSTANCE_ID must be unique to each running consumer"
        )

    def _transaction_error(self, e: KafkaException, doing: str) -> PipelineError:
        error = _error_of(e)
        if error is None:
            return TransactionError(f"{doing}: {e}")
        if error.code() in _FENCED:
            return self._fenced(error)
        if error.code() in _DENIED or error.code() in _CREDENTIALS:
            return translate_error(error, doing)
        # Retriable, abortable or fatal: the runtime replaces the producer, whose init_transactions settles
        # the transaction left open.
        return TransactionError(f"{doing}: {error.name()}: {error.str()}")

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as e:
            raise self._transaction_error(e, "begin transaction") from e

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        membership = _membership(group_metadata)
        if offsets and membership is not None and (membership[0] < 0 or not membership[1]):
            # librdkafka clears the member id (max.poll.interval passed) or the generation (an illegal one) on
            # its own thread; a coordinator does not fence a commit made under either, so refuse it here.
            raise TransactionError(f"not committing: this consumer is not a group member ({membership})")
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    [_theirs(tp, o) for tp, o in offsets.items()], group_metadata, timeout_s
                )
            self._producer.commit_transaction(timeout_s)
        except KafkaException as e:
            raise self._transaction_error(e, "transaction not committed") from e
        self._errors.succeeded()

    def abort_transaction(self, timeout_s: float) -> None:
        try:
            self._producer.abort_transaction(timeout_s)
        except KafkaException as e:
            raise self._transaction_error(e, "transaction not aborted") from e

    def close(self, timeout_s: float) -> None:
        # Whatever is not delivered within the timeout is dropped (purged), so that closing never waits on a
        # broker that is away; a transaction left open is aborted, or fenced by the next producer of its id.
        try:
            self._producer.flush(timeout_s)
        except KafkaException as e:  # e.g. a fenced producer's fatal state: nothing left to deliver
            logger.debug("producer flush at close: %s", e)
        _close_quietly(self._producer)


class ConfluentSharedProducer:
    """A `SharedProducer` on one confluent-kafka `Producer`. librdkafka's sends are thread-safe and never touch
    the network; a thread of ours serves its delivery callbacks (`poll`). librdkafka has no round-robin
    partitioner, so the partition of each record is chosen here, in turn over the partitions `prepare` read."""

    def __init__(self, config: dict[str, Any], role: str) -> None:
        self._errors = _Errors(role)
        self._config = config | {"error_cb": self._on_error, "logger": librdkafka_logger}
        self._producer = _create(Producer, self._config)
        self._failed = False  # a fatal error: the delivery thread replaces the producer
        self._partitions: dict[str, list[int]] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._serve_deliveries, name=f"{role}-deliveries", daemon=True)
        self._poller.start()

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():  # an idempotent producer that cannot go on (e.g. its sequence numbers lost)
            self._failed = True
        self._errors(error)

    def _serve_deliveries(self) -> None:
        # The one thread that polls, and so the one that replaces a failed producer (never the event loop's
        # send, and never while another thread polls the old one). It never dies: a callback that raises is
        # logged, and the acks of other records keep coming.
        while not self._closing.is_set():
            if self._failed:
                self._replace()
            try:
                self._producer.poll(0.1)
            except KafkaException as e:
                logger.error("the shared producer failed (%s); replacing it", translate(e, "poll"))
                self._failed = True
            except Exception:
                logger.exception("a delivery callback raised")

    def _replace(self) -> None:
        try:
            fresh = _create(Producer, self._config)
        except ConfigurationError:
            logger.exception("the shared producer could not be replaced")
            self._closing.wait(1.0)
            return
        old, self._producer, self._failed = self._producer, fresh, False
        _close_quietly(old)  # its records in flight fail: their requests are answered 503
        logger.warning("the shared producer was replaced after a fatal error")

    def prepare(self, topics: Sequence[str], timeout_s: float) -> None:
        self._errors.raise_pending()
        for topic in topics:
            try:
                metadata = self._producer.list_topics(topic, timeout=timeout_s)
            except KafkaException as e:
                self._errors.raise_pending()
                raise translate(e, f"reading the metadata of {topic}") from e
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                reason = found.error.str() if found is not None and found.error else "no partitions"
                raise BrokerUnavailableError(f"topic {topic}: {reason}")
            self._partitions[topic] = sorted(found.partitions)
            self._turns.setdefault(topic, itertools.count())
        self._errors.succeeded()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        on_delivered: OnDelivered,
    ) -> None:
        self._errors.raise_pending()
        if self._failed:
            raise PublishError("the Kafka producer failed and is being replaced")

        def delivered(error: KafkaError | None, _message: Message) -> None:
            on_delivered(None if error is None else PublishError(f"{error.name()}: {error.str()}"))

        partitions = self._partitions.get(topic)
        # next() on an itertools.count is atomic: concurrent senders still take turns.
        partition = partitions[next(self._turns[topic]) % len(partitions)] if partitions else -1
        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), partition=partition, on_delivery=delivered
            )
        except BufferError as e:
            raise PublishError("the producer's local queue is full") from e
        except KafkaException as e:
            error = _error_of(e)
            if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
                self._failed = True  # the delivery thread replaces it
            raise PublishError(f"send to {topic} failed: {translate(e, 'send')}") from e

    def close(self, timeout_s: float) -> None:
        try:
            left = self._producer.flush(timeout_s)
            if left:
                logger.warning(
                    "Kafka did not acknowledge %d buffered records within %.0f s; dropping them",
                    left,
                    timeout_s,
                )
        except KafkaException as e:
            logger.warning("closing the producer: %s", e)
        finally:
            self._closing.set()
            self._poller.join(1.0)
            _close_quietly(self._producer)  # each waiting request learns its dropped records failed


class ConfluentAdmin:
    """`AdminClient` on confluent-kafka's AdminClient. librdkafka connects in its own threads, so a refused
    password or certificate is learnt from its error events: a request that times out raises the access error
    seen meanwhile, if any, rather than "timed out"."""

    def __init__(self, config: dict[str, Any], role: str, timeout_s: float = 10.0) -> None:
        self._role = role
        self._timeout_s = timeout_s
        self._errors = _Errors(role)
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._config = config
        self._readers: dict[str, Consumer] = {}
        try:
            self._admin = AdminClient(config | {"error_cb": self._errors, "logger": librdkafka_logger})
        except KafkaException as e:
            raise ConfigurationError(
                f"Kafka client settings refused: {e.args[0].str() if e.args else e}"
            ) from e

    def _track(self, futures: Mapping[Any, Any]) -> Mapping[Any, Any]:
        """Remember requests in flight until they end (see `close`)."""
        for future in futures.values():
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)
        return futures

    def _wait(self, doing: str, future: Any) -> Any:
        try:
            result = future.result(timeout=self._timeout_s)
        except KafkaException as e:
            raise self._failure(doing, e) from e
        except (TimeoutError, concurrent.futures.TimeoutError) as e:
            raise self._failure(doing, e) from e
        self._errors.succeeded()
        return result

    def _failure(self, doing: str, e: BaseException) -> PipelineError:
        self._admin.poll(0)  # serves the error events (error_cb) librdkafka queued meanwhile
        error = translate(e, f"{self._role}: {doing}")
        if not isinstance(error, KafkaAccessError):
            pending = self._errors.pending()
            if pending is not None:
                return pending
        return error

    def _metadata(self, doing: str, topic: str | None = None) -> Any:
        try:
            metadata = self._admin.list_topics(topic=topic, timeout=self._timeout_s)
        except KafkaException as e:
            raise self._failure(doing, e) from e
        self._errors.succeeded()
        return metadata

    def topic_names(self) -> set[str]:
        return {name for name in self._metadata("listing topics").topics if not name.startswith("__")}

    def create_topics(self, topics: Sequence[TopicDefinition]) -> list[str]:
        new = [
            NewTopic(
                t.name, num_partitions=t.partitions, replication_factor=t.replication_factor, config=t.config
            )
            for t in topics
        ]
        futures = self._admin.create_topics(
            new, operation_timeout=self._timeout_s, request_timeout=self._timeout_s
        )
        created = []
        for name, future in futures.items():
            try:
                self._wait(f"creating topic {name}", future)
                created.append(name)
            except PipelineError as e:
                cause = _error_of(e.__cause__) if e.__cause__ is not None else None
                if cause is None or cause.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        # As kafka-python's wait_for_metadata: return once every topic has its partitions in the metadata.
        deadline = time.monotonic() + self._timeout_s
        while created and time.monotonic() < deadline:
            known = self._metadata("waiting for new topics").topics
            if all(name in known and known[name].partitions and not known[name].error for name in created):
                break
            time.sleep(0.1)
        return created

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        known = self._metadata("describing topics").topics
        missing = [name for name in topics if name not in known or known[name].error is not None]
        if missing:
            raise BrokerUnavailableError(f"{self._role}: no metadata for topics {', '.join(missing)}")
        return {name: len(known[name].partitions) for name in topics}

    def topic_config(self, topics: Sequence[str], key: str) -> dict[str, str]:
        futures = self._track(
            self._admin.describe_configs(
                [ConfigResource(ResourceType.TOPIC, name) for name in topics], request_timeout=self._timeout_s
            )
        )
        values = {}
        for resource, future in futures.items():
            entries = self._wait(f"describing the config of topic {resource.name}", future)
            values[resource.name] = str(entries[key].value)
        return values

    def group_offsets(self, group_id: str, topic: str) -> dict[int, tuple[int, int]]:
        # Through a consumer of the group that never joins it (committed() and the watermarks), as the runtime's
        # lag reads them: the admin API's list_offsets killed the API's process during a rolling restart of the
        # secured cluster (no Python traceback; seen 3 times in 3 runs), this path never did.
        doing = f"reading the offsets of group {group_id} on {topic}"
        count = self.partition_counts([topic])[topic]
        partitions = [KafkaTopicPartition(topic, p) for p in range(count)]
        reader = self._readers.get(group_id)
        if reader is None:
            reader = Consumer(
                self._config
                | {"group.id": group_id, "enable.auto.commit": False, "error_cb": self._errors}
                | {"logger": librdkafka_logger}
            )
            self._readers[group_id] = reader
        try:
            committed = reader.committed(partitions, timeout=self._timeout_s)
            ends = {
                p: reader.get_watermark_offsets(tp, timeout=self._timeout_s, cached=False)
                for p, tp in enumerate(partitions)
            }
        except KafkaException as e:
            raise self._failure(doing, e) from e
        done: dict[int, int] = {}
        for tp in committed:
            if tp.error is not None:
                raise translate_error(tp.error, f"{self._role}: {doing}")
            done[tp.partition] = max(0, tp.offset)  # OFFSET_INVALID (-1001): never committed
        missing = [p for p, end in ends.items() if end is None]
        if missing:
            raise BrokerUnavailableError(f"{self._role}: {doing}: no log end offset for partitions {missing}")
        self._errors.succeeded()
        return {p: (done.get(p, 0), int(ends[p][1])) for p in range(count)}

    def broker_count(self) -> int:
        future = self._admin.describe_cluster(request_timeout=self._timeout_s)
        self._track({"cluster": future})
        return len(self._wait("describing the cluster", future).nodes)

    def close(self) -> None:
        # librdkafka's admin client has no close(): it is destroyed when collected. Not while a request we gave up
        # on is still in flight (its answer would come to a destroyed client), so wait for those first: every
        # request carries a timeout, so they all end.
        concurrent.futures.wait(list(self._pending), timeout=self._timeout_s + 5)
        self._admin.poll(0)
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
