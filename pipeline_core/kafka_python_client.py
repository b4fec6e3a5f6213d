"""`ConsumerClient` and `ProducerClient` on kafka-python, with its errors turned into the project's own."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec
from kafka.errors import (
    AuthorizationError,
    CommitFailedError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata

from pipeline_core.errors import (
    BrokerUnavailableError,
    CommitRefusedError,
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
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Errors that say a newer producer of this transactional id exists: a fenced producer's in-flight sends fail
# with InvalidProducerEpochError rather than ProducerFencedError.
FENCED = (ProducerFencedError, InvalidProducerEpochError)
COMMITTED_TIMEOUT_MS = 5_000  # reading committed offsets waits for pending transactional ones; bounded
# Longer than a validation round trip to a live leader takes, shorter than a stall anyone would wait out.
VALIDATION_STALL_S = 10.0


def translate(error: KafkaError, doing: str) -> PipelineError:
    """One kafka-python error as the project's: refused access is a configuration error, the rest a broker
    that may come back (retriable when kafka-python says so)."""
    if isinstance(error, SaslAuthenticationFailedError):
        return KafkaAccessError.credentials_refused(doing, str(error))
    if isinstance(error, AuthorizationError):
        return KafkaAccessError.acl_missing(doing, type(error).__name__)
    retriable = bool(getattr(error, "retriable", False)) or isinstance(error, KafkaTimeoutError)
    return BrokerUnavailableError(f"{doing}: {type(error).__name__}: {error}", retriable=retriable)


def _fenced(error: BaseException | None, transactional_id: object) -> FencedError:
    return FencedError(
        f"producer fenced: another process took over transactional id {transactional_id} "
        f"({error}); CONSUMER_INSTANCE_ID must be unique to each running consumer"
    )


def _cannot_parse(error: BaseException) -> bool:
    """Whether a poll failed on the bytes of a record (it will at every poll) rather than on the cluster."""
    if isinstance(error, (UnicodeDecodeError, ValueError)):  # e.g. a header key that is not UTF-8
        return True
    return isinstance(error, KafkaError) and not (
        error.retriable or isinstance(error, (AuthorizationError, SaslAuthenticationFailedError))
    )


def _record(r: Any) -> RawRecord:
    return Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))


def _ours(tps: Iterable[Any]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in tps}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    def on_partitions_revoked(self, revoked: set[Any]) -> None:
        self._listener.on_revoked(_ours(revoked))

    def on_partitions_assigned(self, assigned: set[Any]) -> None:
        self._listener.on_assigned(_ours(assigned))


class KafkaPythonConsumer:
    """A `ConsumerClient` around one `KafkaConsumer` (made by `pipeline_core.clients.create_consumer`)."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._validating_since: dict[Any, float] = {}  # kafka-python partition -> when it began to wait

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._consumer.subscribe(list(topics), listener=_Listener(listener))

    def topics_known(self, topics: Sequence[str]) -> bool:
        return all(self._consumer.partitions_for_topic(t) for t in topics)

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as e:
            if _cannot_parse(e):  # a record's bytes, not the cluster: never a reason to stop the consumer
                self._drop_pending_parse_error(e)
                raise BrokerUnavailableError(f"poll: {type(e).__name__}: {e}", retriable=True) from e
            raise translate(e, "poll") from e
        self._drop_pending_parse_error(None)
        self._unstick_offset_validation()
        return [_record(r) for batch in polled.values() for r in batch]

    def _unstick_offset_validation(self) -> None:
        """kafka-python 3.0.12 validates a partition's position against a new leader (KIP-320) before fetching it
        again, in a background task; after a broker was killed and restarted that task was seen to wait for
        ever on a request the dead connection never answered, and the partitions it held stopped being fetched
        (5 minutes, until a rolling restart reset the connections; a sink missed four results). A position
        that has waited `VALIDATION_STALL_S` is sought again as a bare offset, which kafka-python fetches at
        once. Validation guards against a log truncated by an unclean leader election, which acks=all with
        min.insync.replicas >= 2 and no unclean election rule out."""
        subscription = getattr(self._consumer, "_subscription", None)  # private: see the docstring
        assignment = getattr(subscription, "assignment", None)
        if not isinstance(assignment, dict):
            return
        now = time.monotonic()
        for tp, state in list(assignment.items()):
            if not getattr(state, "awaiting_validation", False) or state.position is None:
                self._validating_since.pop(tp, None)
                continue
            since = self._validating_since.setdefault(tp, now)
            if now - since >= VALIDATION_STALL_S:
                logger.warning(
                    "%s[%d] waited %.0f s for its offset validation after a leader change; fetching it again "
                    "from offset %d",
                    tp.topic,
                    tp.partition,
                    now - since,
                    state.position.offset,
                )
                self._consumer.seek(tp, state.position.offset)
                self._validating_since.pop(tp, None)

    def _drop_pending_parse_error(self, raised: KafkaError | None) -> None:
        """kafka-python 3.0.12 returns the records before one it cannot parse (a header key that is not UTF-8, which
        the broker takes and Go or C clients can write) and keeps the error for the next poll, but drops it there
        unseen and stops fetching: the consumer would sit idle on every partition for good. Discarding its
        buffer of that partition and seeking it again keeps the other partitions flowing (measured); that one
        partition still stalls at the record, which kafka-python cannot step over (docs/reliability.md)."""
        fetcher = self._consumer._fetcher  # private: see the docstring
        pending = fetcher._next_in_line_exception_metadata
        if raised is None and (pending is None or not _cannot_parse(pending.exception)):
            return
        fetcher._next_in_line_exception_metadata = None
        buffered = fetcher._next_partition_records
        if buffered is not None:
            buffered.drain()
            fetcher._next_partition_records = None
            tp = buffered.topic_partition
            try:
                position = self._consumer.position(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
                self._consumer.seek(tp, position)  # fetch again from where the consumer stands
            except (
                KafkaError
            ) as e:  # no longer assigned, or no answer: the next assignment or poll fetches anew
                logger.debug("%s not re-fetched: %s", tp, e)

    def readable(self, timeout_s: float) -> dict[TopicPartition, int]:
        partitions = sorted(self._consumer.assignment())
        # One deadline for the whole question, not one per partition: the runtime's loop waits on it.
        deadline = time.monotonic() + timeout_s

        def left_ms() -> int:
            return max(1, int((deadline - time.monotonic()) * 1000))

        try:
            ends = self._consumer.end_offsets(partitions, timeout_ms=left_ms())
            positions = {tp: self._consumer.position(tp, timeout_ms=left_ms()) for tp in partitions}
        except KafkaError as e:
            raise translate(e, "reading end offsets") from e
        return {
            TopicPartition(tp.topic, tp.partition): max(0, ends[tp] - position)
            for tp, position in positions.items()
            if position is not None and tp in ends
        }

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        kafka_offsets = {KafkaTopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        try:
            self._consumer.commit(kafka_offsets, timeout_ms=int(timeout_s * 1000))
        except CommitFailedError as e:
            raise CommitRefusedError(str(e)) from e
        except KafkaError as e:
            raise translate(e, "offset commit") from e

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        try:
            return {
                tp: self._consumer.committed(KafkaTopicPartition(*tp), timeout_ms=COMMITTED_TIMEOUT_MS)
                for tp in partitions
            }
        except KafkaError as e:
            raise translate(e, "reading committed offsets") from e

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(KafkaTopicPartition(*tp), offset)

    def seek_to_start(self, tp: TopicPartition) -> None:
        self._consumer.seek_to_beginning(KafkaTopicPartition(*tp))

    def assignment(self) -> set[TopicPartition]:
        return _ours(self._consumer.assignment())

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def lag(self) -> dict[TopicPartition, int]:
        # Highwater and position are both known locally once a fetch response came: no broker round trip.
        lag: dict[TopicPartition, int] = {}
        try:
            for tp in self._consumer.assignment():
                highwater = self._consumer.highwater(tp)
                position = self._consumer.position(tp, timeout_ms=0) if highwater is not None else None
                if position is not None:
                    lag[TopicPartition(tp.topic, tp.partition)] = max(0, highwater - position)
        except KafkaError as e:  # IllegalStateError if a partition moved meanwhile: the next call is right
            logger.debug("lag not read: %s", e)
        return lag

    def close(self) -> None:
        self._consumer.close(autocommit=False)  # this leaves the group at once


class KafkaPythonProducer:
    """A `ProducerClient` around one `KafkaProducer` (made by `pipeline_core.clients.create_producer`).

    kafka-python's `send_offsets_to_transaction`, `commit_transaction` and `abort_transaction` wait without a
    time limit, so a broker that dies mid-commit would wedge the consumer. The same three steps are taken
    here through its transaction manager with a bounded wait; a transaction whose outcome is unknown raises
    `TransactionError`, and the runtime then replaces the producer (whose `init_transactions` settles it).
    """

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self._transactional_id = producer.config.get("transactional_id")
        self._futures: list[tuple[OutRecord, Any]] = []

    @property
    def transactional(self) -> bool:
        return bool(self._producer.config.get("transactional_id"))

    def send(self, record: OutRecord) -> None:
        try:
            future = self._producer.send(
                record.topic, key=record.key, value=record.value, headers=list(record.headers)
            )
        except MessageSizeTooLargeError as e:
            raise RecordRefusedError(f"record of {record.size} bytes is too large: {e}", [record]) from e
        except (TypeError, ValueError) as e:  # e.g. neither key nor value: kafka-python refuses such a record
            raise RecordRefusedError(f"record refused by the client: {e}", [record]) from e
        except KafkaError as e:
            raise PublishError(f"send to {record.topic} failed: {type(e).__name__}: {e}") from e
        self._futures.append((record, future))

    def flush(self, timeout_s: float) -> None:
        futures, self._futures = self._futures, []
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as e:
            raise PublishError(f"flush failed: {type(e).__name__}: {e}") from e
        failed = [(r, f) for r, f in futures if not f.succeeded()]
        causes = [f.exception for _, f in failed]
        if self.transactional and any(isinstance(c, FENCED) for c in causes):
            raise _fenced(next(c for c in causes if isinstance(c, FENCED)), self._transactional_id)
        denied = next((c for c in causes if isinstance(c, AuthorizationError)), None)
        if denied is not None:
            raise translate(denied, "producing")
        # A record the broker refuses for its size will be refused every time; anything else may pass later.
        refused = [r for r, f in failed if isinstance(f.exception, MessageSizeTooLargeError)]
        if refused:
            raise RecordRefusedError(f"{len(refused)} records too large for their topic", refused)
        if failed:
            record, future = failed[0]
            cause = future.exception
            raise PublishError(
                f"{len(failed)} of {len(futures)} records not acknowledged, e.g. to {record.topic}: "
                f"{cause or 'timed out'!r}"
            ) from cause

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except FENCED as e:
            raise _fenced(e, self._transactional_id) from e
        except KafkaError as e:
            raise TransactionError(f"begin transaction: {type(e).__name__}: {e}") from e

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        manager = self._producer._transaction_manager  # private: see the class docstring
        generation = getattr(group_metadata, "generation_id", 0)
        if (generation is not None and generation < 0) or getattr(group_metadata, "member_id", "x") == "":
            # Not a member of the group (any more): the broker would not fence such a commit, so refuse it here.
            raise TransactionError(f"not committing: this consumer is not a group member ({group_metadata})")
        kafka_offsets = {KafkaTopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        try:
            if kafka_offsets:
                self._wait(manager.send_offsets_to_transaction(kafka_offsets, group_metadata), timeout_s)
            self._wait(manager.begin_commit(), timeout_s)
        except FENCED as e:
            raise _fenced(e, self._transactional_id) from e
        except KafkaError as e:
            if isinstance(e, AuthorizationError):
                raise translate(e, "transaction commit") from e
            if isinstance(
                manager.last_error, FENCED
            ):  # the producer is in a fatal state because it was fenced
                raise _fenced(manager.last_error, self._transactional_id) from e
            raise TransactionError(f"transaction not committed: {type(e).__name__}: {e}") from e

    def abort_transaction(self, timeout_s: float) -> None:
        try:
            self._wait(self._producer._transaction_manager.begin_abort(), timeout_s)
        except KafkaError as e:
            raise TransactionError(f"transaction not aborted: {type(e).__name__}: {e}") from e

    def _wait(self, result: Any, timeout_s: float) -> None:
        self._producer._sender.wakeup()  # as kafka-python's own methods do
        if not result.wait(timeout_ms=int(timeout_s * 1000)):
            raise TransactionError(f"no answer from the transaction coordinator within {timeout_s:.0f} s")

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)


class KafkaPythonSharedProducer:
    """A `SharedProducer` around one `KafkaProducer` (thread-safe; `send` only appends to a batch once the
    topic's metadata is known), made with the round-robin partitioner by `pipeline_core.clients`."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer

    def prepare(self, topics: Sequence[str], timeout_s: float) -> None:
        try:
            for topic in topics:
                self._producer.partitions_for(topic)
        except KafkaError as e:
            raise translate(e, "reading topic metadata") from e

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        on_delivered: OnDelivered,
    ) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=list(headers))
        except KafkaError as e:
            raise PublishError(f"send to {topic} failed: {type(e).__name__}: {e}") from e
        future.add_callback(lambda _metadata: on_delivered(None)).add_errback(on_delivered)

    def close(self, timeout_s: float) -> None:
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaTimeoutError:
            logger.warning(
                "Kafka did not acknowledge every buffered record within %.0f s; dropping them", timeout_s
            )
            # kafka-python 3.0's close() raises from its flush before stopping the sender thread, which then
            # retries forever; force the sender down (aborting the batches), and close() completes at once.
            self._producer._sender.force_close()
            self._producer._sender.join(timeout_s)
            self._producer.close(timeout=0)


class KafkaPythonAdmin:
    """`AdminClient` on kafka-python's KafkaAdminClient."""

    def __init__(self, admin: KafkaAdminClient) -> None:
        self._admin = admin

    def _call(self, doing: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except KafkaError as e:
            raise translate(e, doing) from e

    def topic_names(self) -> set[str]:
        return set(self._call("listing topics", self._admin.list_topics))

    def create_topics(self, topics: Sequence[TopicDefinition]) -> list[str]:
        new = {
            t.name: {
                "num_partitions": t.partitions,
                "replication_factor": t.replication_factor,
                "configs": t.config,
            }
            for t in topics
        }
        try:
            self._call(
                "creating topics",
                lambda: self._admin.create_topics(new, timeout_ms=15_000, wait_for_metadata=True),
            )
        except BrokerUnavailableError as e:
            if isinstance(e.__cause__, TopicAlreadyExistsError):
                return []  # kafka-python raises for the batch: another service created them meanwhile
            raise
        return [t.name for t in topics]

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        described = self._call("describing topics", lambda: self._admin.describe_topics(list(topics)))
        return {t["name"]: len(t["partitions"]) for t in described}

    def topic_config(self, topics: Sequence[str], key: str) -> dict[str, str]:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name, {key: None}) for name in topics]
        described = self._call(
            "describing topic configs", lambda: self._admin.describe_configs(resources, config_filter="all")
        )["topic"]
        return {name: str(described[name][key]["value"]) for name in topics}

    def group_offsets(self, group_id: str, topic: str) -> dict[int, tuple[int, int]]:
        def read() -> dict[int, tuple[int, int]]:
            partitions = [
                KafkaTopicPartition(topic, p["partition_index"])
                for p in self._admin.describe_topics([topic])[0]["partitions"]
            ]
            ends = self._admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
            committed: dict[KafkaTopicPartition, OffsetAndMetadata] = self._admin.list_group_offsets(
                {group_id: partitions}
            ).get(group_id, {})
            offsets = {}
            for tp in partitions:
                done = committed.get(tp)
                offsets[tp.partition] = (
                    done.offset if done is not None and done.offset >= 0 else 0,
                    ends[tp].offset,
                )
            return offsets

        return self._call(f"reading the offsets of group {group_id} on {topic}", read)

    def broker_count(self) -> int:
        return len(self._call("describing the cluster", self._admin.describe_cluster)["brokers"])

    def close(self) -> None:
        self._admin.close()
