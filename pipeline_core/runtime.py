"""The consumer runtime: one poll -> decode -> handle -> checkpoint loop that every consumer of the project runs.

A service gives it a `BatchHandler` ("this batch becomes these output records") and a decoder per topic;
the runtime owns everything else, once: the clients, the subscription and rebalance listener, typed records,
the poison policy, retries, the checkpoint, stats and the shutdown summary line.

The checkpoint, at-least-once (`PROCESSING_GUARANTEE=at-least-once`):
  Step 1: send the batch's outputs (results, dead letters).
  Step 2: flush: every output is acknowledged by all in-sync replicas (`acks=all`).
  Step 3: mark the batch's offsets done; commit them at most every COMMIT_INTERVAL_MS (`OffsetCommitter`).
A crash between 2 and 3 re-delivers finished work: its outputs reach the topic again.

The checkpoint, exactly-once:
  Step 1: begin a transaction; send the outputs inside it.
  Step 2: flush: acknowledged, but invisible to `read_committed` readers.
  Step 3: add the consumed offsets to the transaction, with the member's group generation, and commit: the
          outputs and the offsets become visible together, or neither does. A member that lost its partitions
          in a rebalance (a zombie) is refused by the group coordinator; a restarted process with the same
          transactional id fences its predecessor's producer.
After a failed transaction the producer is replaced and the consumer rewinds to the committed offsets, which
are right whether or not the failed commit had reached the broker.

The poison policy (no record, whatever its bytes, stops or wedges a consumer):
- a record its topic's decoder refuses, or whose handling raises a non-retriable error (tried alone, up to
  POISON_MAX_ATTEMPTS times), or whose output the broker would refuse (too large), is *poisoned*: the handler
  turns it into a failed result where it can (`on_poison`), and a copy goes to the dead-letter topic with a
  bounded reason; the rest of its batch is handled as usual;
- a retriable error (broker or store away) retries the batch with backoff, logging attempts 1, 2, 4, 8 ...;
- anything the runtime itself cannot survive (refused credentials, a bug in the loop) ends `run()` with the
  error, and the process exits non-zero so that a supervisor restarts it: never a live process doing nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from pipeline_core.errors import FencedError, PipelineError, RecordRefusedError
from pipeline_core.events import RawRecord, Record, bounded
from pipeline_core.kafka_client import (
    ConsumerClient,
    OutRecord,
    ProducerClient,
    TopicPartition,
    first_offsets,
    next_offsets,
    partition_names,
)
from pipeline_core.offsets import OffsetCommitter
from pipeline_core.retry import Backoff, is_retriable, retry_call, should_log
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import pipeline_topics

logger = logging.getLogger(__name__)
# Readiness: a poll this recent counts even before partitions are assigned.
RECENT_POLL_S = 30.0

DEAD_LETTER_REASON_HEADER = "dead-letter-reason"
DEAD_LETTER_SOURCE_HEADER = "dead-letter-source"
REASON_LIMIT = 300  # characters of an error message that may travel in an output
# Kafka's record-batch framing on top of a record's key, value and headers.
RECORD_FRAMING_BYTES = 1024
FENCED_LIMIT, FENCED_WINDOW_S = 3, 60.0

Decoder = Callable[[RawRecord], Any]


def describe(error: BaseException) -> str:
    """A bounded, printable reason for an output or a log line: hostile input never comes back whole."""
    return bounded(f"{type(error).__name__}: {error}", REASON_LIMIT)


@dataclass(frozen=True, slots=True)
class Failed:
    """A handler's word that one record of its batch cannot be processed: the runtime poisons it."""

    source: Record[Any]
    reason: str


class BatchHandler(Protocol):
    """What a service tells the runtime: what a batch of decoded records becomes."""

    def handle(self, batch: Sequence[Record[Any]]) -> Sequence[OutRecord | Failed]:
        """The outputs of these records (each naming its `source`), or `Failed` for a record that cannot be
        processed; raise to fail the whole batch (its records are then tried one by one)."""
        ...

    def on_poison(self, record: RawRecord, reason: str) -> Sequence[OutRecord]:
        """The outputs that tell a poisoned record's job it failed (e.g. a failed result), or none."""
        ...


@dataclass
class RuntimeStats:
    """Counts for metrics and the shutdown summary line."""

    batches: int = 0
    records: int = 0
    outputs: int = 0
    poisoned: int = 0
    retries: int = 0
    aborted_transactions: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        """One line: what this consumer did in its life."""
        return (
            f"{time.monotonic() - self.started:.0f} s: {self.batches} batches, {self.records} records, "
            f"{self.outputs} outputs, {self.poisoned} dead-lettered, {self.retries} retries, "
            f"{self.aborted_transactions} transactions aborted"
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """How one consumer runs: its group, what it reads (a decoder per topic) and where outputs may go."""

    role: str
    group_id: str
    decoders: Mapping[str, Decoder]
    dead_letter_topic: str
    output_limits: Mapping[str, int]  # largest record (bytes) each output topic takes
    exactly_once: bool
    transactional_id: str | None
    max_records: int = 500
    poll_timeout_s: float = 0.5
    commit_interval_s: float = 0.2
    connect_timeout_s: float = 60.0
    shutdown_grace_s: float = 15.0
    poison_max_attempts: int = 3
    # Each wait of a checkpoint (flush, commit); with transactions, well inside the transaction timeout, so that
    # the coordinator does not abort a transaction this consumer is still waiting on.
    checkpoint_timeout_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    # Polls that return nothing this long while the brokers say there is something to read are a stalled
    # client, not an idle topic (see `_watch_for_a_stall`).
    stall_check_s: float = 15.0


_STALL_QUERY_TIMEOUT_S = 5.0


class _RetryBatch(Exception):
    """Internal: the batch could not be checkpointed; rewind and try again after a pause."""

    def __init__(self, cause: Exception, *, rewind_to_committed: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.rewind_to_committed = rewind_to_committed


class ConsumerRuntime:
    """One consumer-group member: `run()` until `stop()`; then commit, leave the group and log a summary."""

    def __init__(
        self,
        config: RuntimeConfig,
        handler: BatchHandler,
        consumer_factory: Callable[[], ConsumerClient],
        producer_factory: Callable[[str | None], ProducerClient],
        *,
        on_assignment: Callable[[set[TopicPartition], set[TopicPartition]], None] | None = None,
        after_turn: Callable[[ConsumerClient, bool], None] | None = None,
    ) -> None:
        self.config = config
        self.stats = RuntimeStats()
        self.state = "not started"
        self.last_poll: float | None = None
        self._handler = handler
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._on_assignment = on_assignment
        self._after_turn = after_turn
        self._stopping = threading.Event()
        self._consumer: ConsumerClient | None = None
        self._producer: ProducerClient | None = None
        self._committer: OffsetCommitter | None = None
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._failures = 0  # consecutive failed attempts at the batch in hand
        self._poisoned: dict[tuple[str, int, int], str] = {}  # records whose outputs the broker refused
        self._rewind_pending: set[TopicPartition] = set()
        self._rewind_failing_since: float | None = None  # since when rewinding to the committed offsets fails
        self._empty_since: float | None = None  # since when polls have returned nothing
        self._stalled_checks = 0
        self._unanswered_checks = 0
        self._raw: dict[tuple[str, int, int], RawRecord] = {}  # the batch in hand as polled, by coordinates
        self._bare_dead_letters: set[tuple[str, int, int]] = set()  # records whose full copy was refused
        self._fenced: deque[float] = deque()  # when this consumer's producer was last fenced
        self._generation: object = None  # the group membership the batch in hand was polled under

    # -- lifecycle -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after the batch in hand; safe from a signal handler or another thread, and twice."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stopping.is_set()

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member holds now (empty during a rebalance)."""
        return self._assignment

    def not_ready_reason(self) -> str | None:
        """None while the loop works (it holds partitions, or polled within `RECENT_POLL_S`: a member beyond the
        partition count holds none and is still healthy), else why not: the services' readiness."""
        if self.state.startswith(("retrying", "stopped")):
            return f"consumer is {self.state}"
        if self._unanswered_checks >= 2:
            return "consumer's stall checks go unanswered: the brokers do not say where its partitions stand"
        if self._assignment:
            return None
        if self.last_poll is not None and time.monotonic() - self.last_poll < RECENT_POLL_S:
            return None
        return f"consumer has no partitions yet ({self.state})"

    def run(self) -> None:
        """Connect, join the group and process batches until `stop()`. Raises what it cannot survive."""
        try:
            self._connect()
            while not self._stopping.is_set():
                self._turn()
            self.state = "stopped"
        except InterruptedError:
            self.state = "stopped"
        except BaseException as e:
            self.state = f"stopped by {describe(e)}"
            raise
        finally:
            self._close()

    def _connect(self) -> None:
        c = self.config
        self.state = "connecting to Kafka"
        self._producer = retry_call(
            lambda: self._producer_factory(c.transactional_id if c.exactly_once else None),
            f"{c.role}: creating the producer",
            timeout_s=c.connect_timeout_s,
            stopping=self._stopping,
        )
        self._connect_consumer()

    def _connect_consumer(self) -> None:
        c = self.config
        consumer = retry_call(
            self._consumer_factory,
            f"{c.role}: creating the consumer",
            timeout_s=c.connect_timeout_s,
            stopping=self._stopping,
        )
        self._consumer = consumer
        self._committer = OffsetCommitter(consumer, c.commit_interval_s)
        topics = list(c.decoders)
        # Join only once the topics' partitions are known: a group leader without them assigns itself nothing,
        # and kafka-python 3.0.12 was seen to leave such a member idle until the group evicted it.
        deadline = time.monotonic() + c.connect_timeout_s
        while not consumer.topics_known(topics):
            if time.monotonic() > deadline:
                raise PipelineError(f"{c.role}: no partition metadata for {', '.join(topics)}")
            if self._stopping.wait(0.2):
                raise InterruptedError
        consumer.subscribe(topics, self)
        self.state = "consuming"
        logger.info(
            "%s: joined group %s on %s (%s, %s)",
            c.role,
            c.group_id,
            ", ".join(topics),
            "exactly-once" if c.exactly_once else "at-least-once",
            type(consumer).__name__,
        )

    def _close(self) -> None:
        if self._consumer is not None:
            if self._committer is not None:  # every batch in hand was checkpointed before the loop ended
                self._committer.commit()
            _quietly(self._consumer.close, "closing the consumer")
        if self._producer is not None:
            _quietly(lambda: self._producer.close(self.config.shutdown_grace_s), "closing the producer")  # type: ignore[union-attr]
        self._assignment = frozenset()
        logger.info("%s: stopped after %s", self.config.role, self.stats.summary())

    # -- rebalance listener (called on the client's thread) --------------------------------------------------

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Record the new assignment (the client's whole assignment: a cooperative assignor reports only what
        it added)."""
        whole = self._consumer.assignment() if self._consumer is not None else set()
        self._assignment = frozenset(whole | partitions)
        self._unanswered_checks = 0  # the stall checks start again for the new assignment
        logger.info("%s: partitions assigned: %s", self.config.role, partition_names(partitions) or "none")
        if self._on_assignment is not None:
            self._on_assignment(set(partitions), set())

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Drop what belonged to revoked partitions: each batch is checkpointed before the next poll, so
        nothing is in hand; finished but uncommitted at-least-once offsets are re-delivered to the next owner."""
        self._assignment = self._assignment - partitions
        self._unanswered_checks = 0
        if self._committer is not None:
            self._committer.forget(partitions)
        self._rewind_pending -= partitions
        if partitions:
            logger.info("%s: partitions revoked: %s", self.config.role, partition_names(partitions))
        if self._on_assignment is not None:
            self._on_assignment(set(), set(partitions))

    # -- the loop --------------------------------------------------------------------------------------------

    def _turn(self) -> None:
        consumer = self._consumer
        assert consumer is not None and self._committer is not None
        try:
            if self._producer is None:  # replaced after a failed transaction: settle that one first
                self._producer = self._producer_factory(self.config.transactional_id)
            if self._rewind_pending:
                self._rewind_to_committed(consumer)
            records = consumer.poll(self.config.poll_timeout_s, self.config.max_records)
            # The membership these records are processed under, taken now: a member that stalls past its poll
            # interval is reset to no generation meanwhile, and a transaction committed under that would not be
            # fenced by the coordinator.
            self._generation = consumer.group_metadata()
        except PipelineError as e:
            if not e.retriable:
                raise
            if self._producer is not None and self._rewind_pending and self._rewind_stuck():
                return
            doing = "polling" if self._producer is not None else "replacing the producer"
            self._pause(e, "rewinding to the committed offsets" if self._rewind_pending else doing)
            return
        self._rewind_failing_since = None
        self.last_poll = time.monotonic()
        if not records:
            self._committer.maybe_commit()
            if self._watch_for_a_stall(consumer):
                return
            if self._after_turn is not None:
                self._after_turn(consumer, False)
            return
        try:
            self._process(records)
        except _RetryBatch as retry:
            self._rewind(consumer, records, retry)
            return
        if self._after_turn is not None:
            self._after_turn(consumer, True)
        self._empty_since, self._stalled_checks, self._unanswered_checks = None, 0, 0
        self._failures = 0
        self.state = "consuming"
        for r in records:
            self._poisoned.pop((r.topic, r.partition, r.offset), None)
            self._bare_dead_letters.discard((r.topic, r.partition, r.offset))

    def _process(self, records: list[RawRecord]) -> None:
        outputs = self._outputs(records)
        self._checkpoint(records, outputs)
        self.stats.batches += 1
        self.stats.records += len(records)
        self.stats.outputs += len(outputs)

    def _outputs(self, records: list[RawRecord]) -> list[OutRecord]:
        """Decode and handle a batch; every record ends in outputs or poisoned, unless an error is retriable."""
        decoded: list[Record[Any]] = []
        outputs: list[OutRecord] = []
        self._raw = {(r.topic, r.partition, r.offset): r for r in records}
        for record in records:
            refused = self._poisoned.get((record.topic, record.partition, record.offset))
            if refused is not None:
                outputs += self._poison(record, refused)
                continue
            try:
                decoded.append(record.replace_value(self.config.decoders[record.topic](record)))
            except Exception as e:  # any decoder failure is this record's alone
                outputs += self._poison(record, f"not a readable {record.topic} record: {describe(e)}")
        outputs += self._handle(decoded)
        return [checked for output in outputs for checked in self._within_limit(output)]

    def _handle(self, batch: list[Record[Any]]) -> list[OutRecord]:
        if not batch:
            return []
        try:
            return self._resolve(self._handler.handle(batch))
        except _RetryBatch:
            raise
        except Exception as e:
            if is_retriable(e):
                raise _RetryBatch(e, rewind_to_committed=False) from e
            if len(batch) > 1:
                logger.warning(
                    "%s: batch of %d failed (%s); handling its records one by one",
                    self.config.role,
                    len(batch),
                    describe(e),
                )
                return self._handle_each(batch)
            return self._handle_alone(batch[0], first_error=e)

    def _handle_each(self, batch: list[Record[Any]]) -> list[OutRecord]:
        """The records of a failed batch one by one, each up to POISON_MAX_ATTEMPTS times. Errors that say a
        dependency is away are retriable and retry the whole batch; a handler's other errors are its records'
        own (so the stores class a read-only or lost database as retriable, and only refused data as not)."""
        outputs: list[OutRecord] = []
        failed: list[tuple[Record[Any], Exception]] = []
        for record in batch:
            try:
                outputs += self._resolve(self._handler.handle([record]))
            except _RetryBatch:
                raise
            except Exception as e:
                if is_retriable(e):
                    raise _RetryBatch(e, rewind_to_committed=False) from e
                failed.append((record, e))
        for (
            record,
            first,
        ) in failed:  # tried twice now (in the batch, alone): the remaining attempts, then poison
            outputs += self._handle_alone(record, first_error=first, attempts=2)
        return outputs

    def _handle_alone(
        self, record: Record[Any], first_error: Exception, attempts: int = 1
    ) -> list[OutRecord]:
        """One record that failed `attempts` times, tried up to POISON_MAX_ATTEMPTS in all; poisoned if it never
        succeeds."""
        error: Exception = first_error
        while attempts < self.config.poison_max_attempts:
            attempts += 1
            try:
                return self._resolve(self._handler.handle([record]))
            except _RetryBatch:
                raise
            except Exception as e:
                if is_retriable(e):
                    raise _RetryBatch(e, rewind_to_committed=False) from e
                error = e
        return self._poison(self._raw_of(record), f"failed {attempts} times: {describe(error)}")

    def _resolve(self, results: Sequence[OutRecord | Failed]) -> list[OutRecord]:
        """The handler's outputs, with each `Failed` record poisoned."""
        outputs: list[OutRecord] = []
        for result in results:
            if isinstance(result, Failed):
                outputs += self._poison(self._raw_of(result.source), bounded(result.reason, REASON_LIMIT))
            else:
                outputs.append(result)
        return outputs

    def _raw_of(self, record: Record[Any]) -> RawRecord:
        """The record as polled (its bytes, for the dead-letter copy), from any record with its coordinates."""
        return self._raw.get((record.topic, record.partition, record.offset), record.replace_value(None))

    def _poison(self, record: RawRecord, reason: str) -> list[OutRecord]:
        """A failed result for the record's job (if the handler can make one) and a dead-letter copy."""
        reason = bounded(reason, REASON_LIMIT)
        logger.warning("%s: %s to the dead-letter topic: %s", self.config.role, record.where, reason)
        self.stats.poisoned += 1
        try:
            outputs = list(self._handler.on_poison(record, reason))
        except Exception as e:
            if is_retriable(e):
                raise _RetryBatch(e, rewind_to_committed=False) from e
            logger.error("%s: no failed result for %s: %s", self.config.role, record.where, describe(e))
            outputs = []
        return [*outputs, self._dead_letter(record, reason)]

    def _dead_letter(self, record: RawRecord, reason: str) -> OutRecord:
        """The record's copy for the dead-letter topic, always one a client can send and the topic takes."""
        ours = (
            (DEAD_LETTER_REASON_HEADER, reason.encode()),
            (DEAD_LETTER_SOURCE_HEADER, record.where.encode()),
        )
        where = (record.topic, record.partition, record.offset)
        # Null header values become empty (not every client sends nulls); a record with neither key nor value
        # gets an empty value, since some clients refuse to send one.
        theirs = tuple((k, v or b"") for k, v in record.headers if k not in dict(ours))
        value = _as_bytes(record.value)
        value = b"" if value is None and record.key is None else value
        copy = OutRecord(self.config.dead_letter_topic, record.key, value, theirs + ours, record)
        limit = self._limit(copy.topic)
        if copy.size > limit:  # keep what fits: the reason and source always, the value if it can
            copy = OutRecord(copy.topic, record.key, value, ours, record)
        if copy.size > limit or where in self._bare_dead_letters:
            copy = OutRecord(copy.topic, None, b"", ours, record)
        return copy

    def _within_limit(self, output: OutRecord) -> list[OutRecord]:
        """The output, or, if the broker would refuse it for its size, its source's poison outputs instead."""
        limit = self._limit(output.topic)
        if output.size <= limit:
            return [output]
        reason = f"an output of {output.size} bytes is larger than {output.topic} takes ({limit})"
        if output.source is None or output.topic == self.config.dead_letter_topic:
            logger.error("%s: dropped %s", self.config.role, reason)
            return []
        poison = self._poison(self._raw_of(output.source), reason)
        return [o for o in poison if o.size <= self._limit(o.topic)]

    def _limit(self, topic: str) -> int:
        return self.config.output_limits.get(topic, 1_000_000) - RECORD_FRAMING_BYTES

    # -- checkpoint ------------------------------------------------------------------------------------------

    def _checkpoint(self, records: list[RawRecord], outputs: list[OutRecord]) -> None:
        if self.config.exactly_once:
            self._checkpoint_transaction(records, outputs)
        else:
            self._checkpoint_acknowledged(records, outputs)

    def _checkpoint_acknowledged(self, records: list[RawRecord], outputs: list[OutRecord]) -> None:
        producer, committer = self._producer, self._committer
        assert producer is not None and committer is not None
        try:
            for output in outputs:  # Step 1: send
                producer.send(output)
            if outputs:  # Step 2: every output acknowledged by the in-sync replicas
                producer.flush(self.config.checkpoint_timeout_s)
        except PipelineError as e:
            if not (e.retriable or isinstance(e, RecordRefusedError)):
                raise  # refused access: nothing to retry; the process exits and says why
            self._note_refused(e)
            raise _RetryBatch(e, rewind_to_committed=False) from e
        committer.done(records)  # Step 3: offsets, now that the outputs are safe; committed spaced out
        committer.maybe_commit()

    def _checkpoint_transaction(self, records: list[RawRecord], outputs: list[OutRecord]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        try:
            producer.begin_transaction()  # Step 1: outputs inside a transaction
            for output in outputs:
                producer.send(output)
            producer.flush(self.config.checkpoint_timeout_s)  # Step 2: acknowledged, not yet visible
            # Step 3: offsets and outputs committed together, fenced by the member's group generation.
            producer.commit_transaction(
                next_offsets(records), self._generation, self.config.checkpoint_timeout_s
            )
        except PipelineError as e:
            if isinstance(e, FencedError) and not self._fenced_again():
                pass  # once: the coordinator aborted a transaction that timed out (e.g. the broker was away)
            elif not (e.retriable or isinstance(e, RecordRefusedError)):
                raise  # fenced again and again (two processes share an instance id), or refused access: stop
            self._note_refused(e)
            self.stats.aborted_transactions += 1
            raise _RetryBatch(e, rewind_to_committed=True) from e

    def _fenced_again(self) -> bool:
        """Whether this producer was fenced FENCED_LIMIT times within FENCED_WINDOW_S: a transaction the
        coordinator timed out fences its producer once, a second process with the same transactional id fences
        every replacement, and the two would take turns forever."""
        now = time.monotonic()
        self._fenced.append(now)
        while self._fenced and now - self._fenced[0] > FENCED_WINDOW_S:
            self._fenced.popleft()
        return len(self._fenced) >= FENCED_LIMIT

    def _note_refused(self, error: PipelineError) -> None:
        """Sends the broker will never take: the next attempt poisons the records that made those outputs."""
        if not isinstance(error, RecordRefusedError):
            return
        for output in error.records:
            if not isinstance(output, OutRecord) or output.source is None:
                continue
            key = (output.source.topic, output.source.partition, output.source.offset)
            if output.topic == self.config.dead_letter_topic:
                self._bare_dead_letters.add(
                    key
                )  # next attempt: a copy with no more than the reason and source
            else:
                self._poisoned.setdefault(key, f"its output was refused: {describe(error)}")

    # -- recovery --------------------------------------------------------------------------------------------

    def _rewind(self, consumer: ConsumerClient, records: list[RawRecord], retry: _RetryBatch) -> None:
        """Have the batch again on the next poll, after a pause; a failed transaction also gets a new producer."""
        if retry.rewind_to_committed:
            self._replace_producer()
            self._rewind_pending |= set(first_offsets(records)) & set(self._assignment)
        else:
            for tp, offset in first_offsets(records).items():
                if tp not in self._assignment:
                    continue
                try:
                    consumer.seek(tp, offset)
                except PipelineError as e:
                    if not e.retriable:
                        raise
                    # Not sought now (e.g. librdkafka not fetching it yet): from the committed offset next turn,
                    # which is at or before the batch, so nothing is skipped.
                    self._rewind_pending.add(tp)
        self._pause(retry.cause, f"checkpointing a batch of {len(records)}")

    def _replace_producer(self) -> None:
        """A producer whose transaction failed may be in any state: close it. The next turn makes a new one
        with the same transactional id, whose `init_transactions` settles the old transaction (commit or abort),
        before it polls again."""
        if self._producer is not None:
            _quietly(lambda: self._producer.close(0), "closing the failed producer")  # type: ignore[union-attr]
            self._producer = None

    def _watch_for_a_stall(self, consumer: ConsumerClient) -> bool:
        """After `stall_check_s` of empty polls, ask the brokers whether the assigned partitions have records to
        read; if they have, the client has stalled (kafka-python 3.0.12 was seen to stop fetching partitions
        for minutes after a broker was killed, while its polls went on returning nothing). First remedy: fetch
        those partitions again from the committed offsets. Second, a check later: a new consumer, which leaves
        and rejoins the group. Returns True when the consumer was replaced (the turn ends there)."""
        now = time.monotonic()
        if not self._assignment or self._empty_since is None:
            self._empty_since = now
            return False
        if now - self._empty_since < self.config.stall_check_s:
            return False
        idle_s, self._empty_since = now - self._empty_since, now
        try:
            waiting = {
                tp: n
                for tp, n in consumer.readable(_STALL_QUERY_TIMEOUT_S).items()
                if n and tp in self._assignment
            }
        except PipelineError as e:
            self._unanswered_stall_check(idle_s, e)
            return False
        self._unanswered_checks = 0
        if not waiting:
            self._stalled_checks = 0
            return False
        self._stalled_checks += 1
        self.stats.retries += 1
        names = partition_names(waiting)
        if self._stalled_checks == 1:
            logger.warning(
                "%s: polls returned nothing for %.0f s while %s have %d records to read; fetching them again",
                self.config.role,
                idle_s,
                names,
                sum(waiting.values()),
            )
            self._rewind_pending |= set(waiting)
            return False
        logger.warning(
            "%s: %s still not fetched after fetching them again; replacing the consumer (it rejoins the group)",
            self.config.role,
            names,
        )
        self._stalled_checks = 0
        self._replace_consumer()
        return True

    def _unanswered_stall_check(self, idle_s: float, error: PipelineError) -> None:
        """The stall check got no answer: the brokers are away, or they will not say where this group's
        partitions start (seen with confluent-kafka and exactly-once after the only broker was killed
        mid-transaction and restarted: the group coordinator refused the offsets to every client, for good;
        docs/reliability.md, "Known issue"). Nothing the client can do cures the latter (a new consumer and
        producer were tried, and were refused alike), so: said in the log at the 1st, 2nd, 4th... unanswered
        check in a row, and from the 2nd the consumer reports not ready, until records flow, a check is
        answered or its partitions change."""
        self._unanswered_checks += 1
        checks = self._unanswered_checks
        if should_log(checks):
            logger.warning(
                "%s: polls returned nothing for %.0f s and the brokers did not say whether %s have records to "
                "read (check %d in a row%s): %s",
                self.config.role,
                idle_s,
                partition_names(self._assignment),
                checks,
                "; not ready until they do" if checks >= 2 else "",
                describe(error),
            )

    def _replace_consumer(self) -> None:
        old, self._consumer = self._consumer, None
        if old is not None:
            if self._committer is not None:
                _quietly(self._committer.commit, "committing before replacing the consumer")
            _quietly(old.close, "closing the stalled consumer")
        self._assignment = frozenset()
        self._rewind_pending.clear()
        self._unanswered_checks = 0
        self._connect_consumer()

    def _rewind_stuck(self) -> bool:
        """The committed offsets to rewind to could not be read (the turn fails before it polls): the member
        must not poll past its failed batch, and without polling it would not even hear that its partitions
        moved. After `stall_check_s` of failed attempts it is replaced: the new consumer rejoins the group and
        starts each partition it is given from the committed offset (librdkafka and kafka-python read it with
        retries of their own). Returns True when the consumer was replaced."""
        now = time.monotonic()
        if self._rewind_failing_since is None:
            self._rewind_failing_since = now
            return False
        if now - self._rewind_failing_since < self.config.stall_check_s:
            return False
        logger.warning(
            "%s: the committed offsets of %s could not be read for %.0f s; replacing the consumer (it rejoins the "
            "group and starts from them)",
            self.config.role,
            partition_names(self._rewind_pending),
            now - self._rewind_failing_since,
        )
        self._rewind_failing_since = None
        self.stats.retries += 1
        self._replace_consumer()
        return True

    def _rewind_to_committed(self, consumer: ConsumerClient) -> None:
        partitions = self._rewind_pending & set(self._assignment)
        for tp, offset in consumer.committed(partitions).items():
            if offset is None:
                consumer.seek_to_start(tp)
            else:
                consumer.seek(tp, offset)
        self._rewind_pending.clear()

    def _pause(self, error: Exception, doing: str) -> None:
        self._failures += 1
        self.stats.retries += 1
        self.state = f"retrying after {describe(error)}"
        if should_log(self._failures):
            logger.warning(
                "%s: %s failed (attempt %d): %s; retrying",
                self.config.role,
                doing,
                self._failures,
                describe(error),
            )
        self._stopping.wait(self.config.backoff.delay(self._failures))


def _as_bytes(value: object) -> bytes | None:
    return value if isinstance(value, bytes) or value is None else None


def _quietly(fn: Callable[[], object], doing: str) -> None:
    try:
        fn()
    except Exception as e:  # shutting down: say what went wrong and go on closing the rest
        logger.warning("%s failed: %s", doing, describe(e))


def runtime_config(
    settings: PipelineSettings,
    *,
    role: str,
    group_id: str,
    decoders: Mapping[str, Decoder],
    exactly_once: bool,
    **overrides: Any,
) -> RuntimeConfig:
    """A consumer's runtime configuration from the shared settings (topic limits, intervals, retries)."""
    return RuntimeConfig(
        role=role,
        group_id=group_id,
        decoders=decoders,
        output_limits={spec.name: spec.max_message_bytes for spec in pipeline_topics(settings)},
        exactly_once=exactly_once,
        transactional_id=transactional_id(settings, group_id) if exactly_once else None,
        commit_interval_s=settings.commit_interval_ms / 1000,
        checkpoint_timeout_s=min(30.0, settings.transaction_timeout_ms / 3000) if exactly_once else 30.0,
        connect_timeout_s=settings.kafka_connect_timeout_s,
        poison_max_attempts=settings.poison_max_attempts,
        **({"dead_letter_topic": settings.topic_dead_letter} | overrides),
    )


def transactional_id(settings: PipelineSettings, group_id: str) -> str:
    """The transactional id of this consumer process: stable across its restarts when it has an instance id,
    so that the restarted process fences the transactions its predecessor left open."""
    # Unset, it is unique to this runtime (two in one process must not fence each other), and not stable.
    instance = settings.consumer_instance_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return f"{settings.kafka_client_id_prefix}-{group_id}-{instance}"


def install_stop_signals(runtime: ConsumerRuntime, grace_s: float) -> None:
    """First SIGTERM/SIGINT: finish the batch in hand, checkpoint, leave the group (drain). Second, or the
    grace period over: exit at once (cancel); whatever was not checkpointed is re-delivered."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if runtime.stopping:
            logger.warning("second %s: exiting now; the batch in hand will be re-delivered", name)
            os._exit(130)
        logger.info("%s: finishing the batch in hand, then leaving the group", name)
        runtime.stop()
        watchdog = threading.Timer(grace_s, _force_exit, args=(grace_s,))
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _force_exit(grace_s: float) -> None:
    logger.error(
        "still busy %.0f s after the stop request; exiting; unfinished work will be re-delivered", grace_s
    )
    os._exit(1)
