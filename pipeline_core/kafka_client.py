"""The small Kafka client protocol the consumer runtime is written against.

The runtime (`pipeline_core.runtime`) never imports a Kafka library: it talks to a `ConsumerClient` and a
`ProducerClient`. `pipeline_core.kafka_python_client` implements them on kafka-python, and the unit tests on
an in-memory fake, so that the services' logic is tested without a broker. Errors come out as the project's
own (`BrokerUnavailableError`, `PublishError`, `CommitRefusedError`, `TransactionError`, `KafkaAccessError`),
each saying whether retrying can help.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pipeline_core.events import RawRecord, Record


class TopicPartition(NamedTuple):
    """One partition of a topic (equal to kafka-python's namedtuple of the same name)."""

    topic: str
    partition: int


def partition_names(partitions: Iterable[tuple[str, int]]) -> str:
    """`topic[partition]` for each partition, sorted, for log lines about assignments."""
    return ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(partitions))


def first_offsets(records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
    """The lowest offset of each partition in `records`: where to seek to have the batch again."""
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    return first


def next_offsets(records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
    """One past the highest offset of each partition in `records`: what to commit once they are done."""
    last: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, r.offset), r.offset)
    return {tp: offset + 1 for tp, offset in last.items()}


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce. `source` is the consumed record it was made from, so that an output the broker
    would refuse can be traced back and that record failed instead."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    source: Record[Any] | None = None

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what counts against the topic's `max.message.bytes`."""
        headers = sum(len(k) + len(v) for k, v in self.headers)
        return len(self.key or b"") + len(self.value or b"") + headers


class RebalanceListener(Protocol):
    """Told when partitions move to or from this member (on the client's own thread)."""

    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: set[TopicPartition]) -> None: ...


class ConsumerClient(Protocol):
    """One group member's consumer; commits only when told to."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def topics_known(self, topics: Sequence[str]) -> bool:
        """Whether partition metadata of every topic is known (join only then: see the runtime)."""
        ...

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]: ...

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        """Commit these next offsets; `CommitRefusedError` if the group moved them, retriable errors else."""
        ...

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed next offset of each partition (None: never committed)."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def seek_to_start(self, tp: TopicPartition) -> None:
        """Where the group starts when it has no committed offset (the earliest record)."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def group_metadata(self) -> object:
        """The member's generation, for `ProducerClient.commit_transaction` (so a zombie is fenced)."""
        ...

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end of each assigned partition, from what the client already knows."""
        ...

    def readable(self, timeout_s: float) -> dict[TopicPartition, int]:
        """Records each assigned partition has between its position and its end (the last stable offset, for
        a read_committed reader), asked of the brokers now rather than remembered from the last fetch."""
        ...

    def close(self) -> None:
        """Leave the group and release the connections; commits nothing."""
        ...


class ProducerClient(Protocol):
    """A producer with `acks=all` and idempotence; transactional when made with a transactional id."""

    @property
    def transactional(self) -> bool: ...

    def send(self, record: OutRecord) -> None:
        """Queue one record; `PublishError` (not retriable) if it can never be sent, e.g. too large."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait for every queued record; `PublishError` naming what failed, retriable when it may pass later."""
        ...

    def begin_transaction(self) -> None: ...

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        """Add the consumed offsets to the open transaction and commit both; `TransactionError` if it did not."""
        ...

    def abort_transaction(self, timeout_s: float) -> None: ...

    def close(self, timeout_s: float) -> None: ...


OnDelivered = Callable[[Exception | None], None]


class SharedProducer(Protocol):
    """One producer shared by every request of a service (the API's): `acks=all`, idempotent, each record
    dealt to the topic's partitions in turn. `send` never blocks on the network; each record's outcome is told
    to its callback, on a thread of the client's (None: acknowledged by the in-sync replicas)."""

    def prepare(self, topics: Sequence[str], timeout_s: float) -> None:
        """Learn the topics' partitions now, so that `send` has nothing to wait for; `PipelineError` if the
        cluster does not answer."""
        ...

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        on_delivered: OnDelivered,
    ) -> None:
        """Queue one record; `PublishError` at once if it cannot be queued (too large, local queue full)."""
        ...

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued within `timeout_s`, drop the rest (logged), and release the connections."""
        ...


class TopicDefinition(Protocol):
    """What creating a topic needs (`pipeline_core.topics.TopicSpec` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> int: ...
    @property
    def replication_factor(self) -> int: ...
    @property
    def config(self) -> dict[str, str]: ...


class AdminClient(Protocol):
    """Topic administration and a group's progress, as the services need them. Every failure is a
    `PipelineError` (`BrokerUnavailableError` for a cluster that does not answer, `KafkaAccessError` for
    refused credentials or a missing ACL)."""

    def topic_names(self) -> set[str]:
        """The topics the cluster has."""
        ...

    def create_topics(self, topics: Sequence[TopicDefinition]) -> list[str]:
        """Create these topics and wait until they are in the metadata; return those this call created (one
        that another client created meanwhile is left out, not an error)."""
        ...

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """How many partitions each of these topics has."""
        ...

    def topic_config(self, topics: Sequence[str], key: str) -> dict[str, str]:
        """One config value of each topic, as the broker applies it (its default if the topic sets none)."""
        ...

    def group_offsets(self, group_id: str, topic: str) -> dict[int, tuple[int, int]]:
        """(committed offset, log end offset) per partition of `topic`; a partition never committed is at 0."""
        ...

    def broker_count(self) -> int:
        """How many brokers the cluster has: one metadata request, the readiness probe."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...
