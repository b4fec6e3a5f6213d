"""An in-memory stand-in for the runtime's Kafka clients, for broker-free unit tests of the runtime and of the
services' handlers. It keeps what the tests need to observe: records per partition, committed offsets, and
transactions (outputs visible to a `read_committed` reader only once committed). Failures are injected."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline_core.errors import BrokerUnavailableError, PublishError, RecordRefusedError, TransactionError
from pipeline_core.events import RawRecord, Record
from pipeline_core.kafka_client import OutRecord, RebalanceListener, TopicPartition


@dataclass
class FakeBroker:
    """Topics of `partitions` partitions each, created on first use; committed offsets per group."""

    partitions: int = 2
    logs: dict[TopicPartition, list[RawRecord]] = field(default_factory=lambda: defaultdict(list))
    committed: dict[str, dict[TopicPartition, int]] = field(default_factory=lambda: defaultdict(dict))
    limits: dict[str, int] = field(default_factory=dict)  # topic -> largest record taken (bytes)

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers=()) -> None:  # type: ignore[no-untyped-def]
        tp = TopicPartition(topic, partition)
        self.logs[tp].append(Record(topic, partition, len(self.logs[tp]), key, value, tuple(headers)))

    def read(self, topic: str) -> list[RawRecord]:
        """Every record of the topic, partition by partition (what a read_committed reader sees)."""
        return [r for tp in sorted(self.logs) if tp.topic == topic for r in self.logs[tp]]


class FakeConsumer:
    """The only member of its group: holds every partition of the topics it subscribes to."""

    def __init__(self, broker: FakeBroker, group: str) -> None:
        self.broker = broker
        self.group = group
        self.positions: dict[TopicPartition, int] = {}
        self.closed = False
        self.fail_polls = 0  # this many polls raise BrokerUnavailableError first
        self.stuck = False  # polls return nothing whatever there is to read (a client's internal stall)
        # Stuck, and the brokers do not say where its partitions start: this many stall checks go unanswered.
        self.offsets_unreadable = 0
        self.stall_checks = 0  # readable() calls
        self.polls = 0  # polls begun, so that a test can wait for one begun after it changed something

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        tps = {TopicPartition(t, p) for t in topics for p in range(self.broker.partitions)}
        committed = self.broker.committed[self.group]
        self.positions = {tp: committed.get(tp, 0) for tp in tps}
        listener.on_assigned(tps)

    def topics_known(self, topics: Sequence[str]) -> bool:
        return True

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]:
        self.polls += 1
        if self.fail_polls:
            self.fail_polls -= 1
            raise BrokerUnavailableError("fake broker away")
        out: list[RawRecord] = []
        if self.stuck or self.offsets_unreadable:
            return out
        for tp in sorted(self.positions):
            log = self.broker.logs[tp]
            while self.positions[tp] < len(log) and len(out) < max_records:
                out.append(log[self.positions[tp]])
                self.positions[tp] += 1
        return out

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        self.broker.committed[self.group].update(offsets)

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self.broker.committed[self.group].get(tp) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_start(self, tp: TopicPartition) -> None:
        self.positions[tp] = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def group_metadata(self) -> object:
        return self.group

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(self.broker.logs[tp]) - pos for tp, pos in self.positions.items()}

    def readable(self, timeout_s: float) -> dict[TopicPartition, int]:
        self.stall_checks += 1
        if self.offsets_unreadable:
            self.offsets_unreadable -= 1
            raise BrokerUnavailableError("reading committed offsets: timed out")
        return self.lag()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Sends land in the broker at flush (at-least-once) or at commit (transactions); failures on demand."""

    def __init__(self, broker: FakeBroker, transactional_id: str | None) -> None:
        self.broker = broker
        self.transactional_id = transactional_id
        self.queued: list[OutRecord] = []
        self.in_transaction = False
        self.fail_flushes = 0  # this many flushes raise a retriable PublishError first
        self.fail_commits = 0  # this many transaction commits raise TransactionError first
        self.lose_commit_answers = 0  # this many commits take effect, then raise as if the answer was lost
        self.closed = False

    @property
    def transactional(self) -> bool:
        return self.transactional_id is not None

    def send(self, record: OutRecord) -> None:
        if self.transactional and not self.in_transaction:
            raise TransactionError("send outside a transaction")
        # As kafka-python does: it refuses a record with neither key nor value, and null header values.
        if (record.key is None and record.value is None) or any(v is None for _, v in record.headers):
            raise RecordRefusedError("kafka-python refuses this record", [record])
        self.queued.append(record)

    def flush(self, timeout_s: float) -> None:
        if self.fail_flushes:
            self.fail_flushes -= 1
            self.queued.clear()
            raise PublishError("fake broker did not acknowledge")
        too_large = [r for r in self.queued if r.size > self.broker.limits.get(r.topic, 1_000_000)]
        if too_large:
            self.queued.clear()
            raise RecordRefusedError("too large", too_large)
        if not self.transactional:
            self._land(self.queued)
            self.queued = []

    def begin_transaction(self) -> None:
        self.in_transaction = True

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        self.in_transaction = False
        if self.fail_commits:
            self.fail_commits -= 1
            self.queued.clear()
            raise TransactionError("fake coordinator aborted the transaction")
        self._land(self.queued)
        self.queued = []
        self.broker.committed[str(group_metadata)].update(offsets)
        if self.lose_commit_answers:
            self.lose_commit_answers -= 1
            raise TransactionError("no answer from the coordinator (the commit went through)")

    def abort_transaction(self, timeout_s: float) -> None:
        self.in_transaction = False
        self.queued.clear()

    def close(self, timeout_s: float) -> None:
        self.closed = True

    def _land(self, records: list[OutRecord]) -> None:
        for r in records:
            partition = hash(r.key) % self.broker.partitions if r.key else 0
            self.broker.append(r.topic, partition, r.key, r.value, r.headers)
