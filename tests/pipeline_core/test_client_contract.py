"""The Kafka client contract the runtime is written against (`pipeline_core.kafka_client`), on the real broker,
once with each library (KAFKA_CLIENT): what one does, the other must do too.

Ordering and headers, commits after processing and where a group resumes, transactions seen only when
committed, a rebalance between two members, records up to the size limit and refused past it, seeking, and
the broker-side questions (readable, committed). Fencing and zombies are in test_transactions.py, on both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pipeline_core.clients import create_consumer_client, create_producer_client
from pipeline_core.errors import PipelineError, RecordRefusedError
from pipeline_core.events import RawRecord
from pipeline_core.kafka_client import ConsumerClient, OutRecord, ProducerClient, TopicPartition, next_offsets
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(180)


class Listener:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.revoked: list[set[TopicPartition]] = []

    # Called on the member's polling thread and read on the test's: each change makes a new set, never
    # mutating one that may be being read.
    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.assigned = self.assigned | partitions

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.assigned = self.assigned - partitions
        self.revoked.append(set(partitions))


def poll_until(
    consumer: ConsumerClient, done: Callable[[list[RawRecord]], bool], timeout_s: float = 30
) -> list[RawRecord]:
    got: list[RawRecord] = []
    deadline = time.monotonic() + timeout_s
    while not done(got) and time.monotonic() < deadline:
        got += consumer.poll(0.3, 50)
    return got


def wait_for(condition: Callable[[], bool], consumers: list[ConsumerClient], timeout_s: float = 45) -> None:
    """Poll every consumer, each on a thread of its own as real members do, until `condition` holds (which must
    not call the consumers: confluent-kafka's wait for the poll in hand).

    Membership moves only while a member polls, and a kafka-python member's poll may wait inside a rebalance
    for the others to rejoin: polled in turns from one thread, the other cannot, and the group rebalanced in a
    loop (seen in CI)."""
    stop = threading.Event()
    unexpected: list[int] = []

    def poll(consumer: ConsumerClient) -> None:
        while not stop.is_set():
            unexpected.extend(len(r.value or b"") for r in consumer.poll(0.2, 1))

    threads = [threading.Thread(target=poll, args=(c,), daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not condition() and time.monotonic() < deadline and not unexpected:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not any(t.is_alive() for t in threads), "a member's poll did not return"
    assert not unexpected, "no record was expected here"
    assert condition(), "timed out"


def send_all(settings: PipelineSettings, records: list[OutRecord]) -> None:
    producer = create_producer_client(settings, "tests")
    for r in records:
        producer.send(r)
    producer.flush(30)
    producer.close(5)


def send_and_flush(producer: ProducerClient, record: OutRecord, timeout_s: float = 30) -> None:
    producer.send(record)
    producer.flush(timeout_s)


def joined(settings: PipelineSettings, group: str, listener: Listener | None = None) -> ConsumerClient:
    consumer = create_consumer_client(settings, "tests", group)
    consumer.subscribe([settings.topic_images], listener or Listener())
    return consumer


def test_records_come_back_in_order_with_their_keys_and_headers(client_settings: PipelineSettings) -> None:
    s = client_settings
    sent = [
        OutRecord(
            s.topic_images, f"k{n}".encode(), f"v{n}".encode(), (("n", str(n).encode()), ("empty", b""))
        )
        for n in range(60)
    ]
    send_all(s, sent)
    consumer = joined(s, s.consumer_group_inference)
    got = poll_until(consumer, lambda got: len(got) >= 60)
    consumer.close()
    assert sorted(r.value for r in got) == sorted(r.value for r in sent), "each record once"
    by_partition: dict[int, list[int]] = {}
    for r in got:
        assert r.key == b"k" + r.value[1:]  # type: ignore[index]
        assert dict(r.headers) == {"n": r.value[1:], "empty": b""}  # type: ignore[index]
        by_partition.setdefault(r.partition, []).append(r.offset)
    assert all(offsets == sorted(offsets) for offsets in by_partition.values()), "in offset order"


def test_a_group_resumes_after_what_it_committed_and_nothing_else(client_settings: PipelineSettings) -> None:
    s = client_settings
    send_all(s, [OutRecord(s.topic_images, None, f"first-{n}".encode()) for n in range(30)])
    first = joined(s, s.consumer_group_inference)
    batch = poll_until(first, lambda got: len(got) >= 30)
    done = [r for r in batch if r.partition % 2 == 0]  # "processed": only the even partitions
    first.commit(next_offsets(done), 10)
    committed = first.committed({TopicPartition(r.topic, r.partition) for r in batch})
    first.close()
    for tp, offset in committed.items():
        expected = next_offsets([r for r in done if r.partition == tp.partition]).get(tp)
        assert offset == expected, (tp, offset, expected)  # None where nothing was committed

    second = joined(s, s.consumer_group_inference)
    again = poll_until(second, lambda got: len(got) >= 30 - len(done), timeout_s=20)
    time.sleep(1)
    again += second.poll(1, 50)
    second.close()
    assert sorted(r.value for r in again) == sorted(r.value for r in batch if r.partition % 2), (
        "exactly what was not committed comes again"
    )


def test_only_committed_transactions_are_read(client_settings: PipelineSettings) -> None:
    s = client_settings
    producer = create_producer_client(s, "tests", f"tests-contract-{s.consumer_group_inference}")
    assert producer.transactional
    for outcome in ("aborted", "committed", "aborted-again", "committed-again"):
        producer.begin_transaction()
        for n in range(5):
            producer.send(OutRecord(s.topic_images, None, f"{outcome}-{n}".encode()))
        producer.flush(10)
        if outcome.startswith("aborted"):
            producer.abort_transaction(10)
        else:
            producer.commit_transaction({}, None, 10)
    producer.close(5)
    consumer = joined(s, s.consumer_group_inference)
    got = poll_until(consumer, lambda got: len(got) >= 10)
    time.sleep(1)
    got += consumer.poll(1, 50)
    # Nothing is left to read: the markers of the transactions are not records (no false stall for the runtime).
    assert sum(consumer.readable(10).values()) == 0
    consumer.close()
    assert sorted(r.value.decode() for r in got) == sorted(  # type: ignore[union-attr]
        f"{o}-{n}" for o in ("committed", "committed-again") for n in range(5)
    )


def test_two_members_share_the_partitions_and_one_takes_all_when_the_other_leaves(
    client_settings: PipelineSettings,
) -> None:
    s = client_settings
    all_partitions = {TopicPartition(s.topic_images, p) for p in range(s.topic_partitions)}
    a_heard, b_heard = Listener(), Listener()
    a = joined(s, s.consumer_group_inference, a_heard)
    wait_for(lambda: a_heard.assigned == all_partitions, [a])
    b = joined(s, s.consumer_group_inference, b_heard)
    wait_for(
        lambda: (
            bool(a_heard.assigned and b_heard.assigned)
            and not (a_heard.assigned & b_heard.assigned)
            and a_heard.assigned | b_heard.assigned == all_partitions
        ),
        [a, b],
    )
    assert a_heard.revoked, "the first member was told what it gave up"
    assert a.assignment() == a_heard.assigned and b.assignment() == b_heard.assigned
    b.close()
    wait_for(lambda: a_heard.assigned == all_partitions, [a])
    a.close()


def test_records_up_to_the_limit_pass_and_larger_ones_are_refused(client_settings: PipelineSettings) -> None:
    s = client_settings
    largest = s.max_record_bytes - 1024  # the framing of one record in its batch stays under the limit
    big = OutRecord(s.topic_images, b"big", b"\x01" * largest)
    send_all(s, [big])
    consumer = joined(s, s.consumer_group_inference)
    got = poll_until(consumer, lambda got: len(got) >= 1)
    consumer.close()
    assert [len(r.value or b"") for r in got] == [largest]

    producer = create_producer_client(s, "tests")
    too_big = OutRecord(s.topic_images, b"too-big", b"\x02" * (s.max_record_bytes + 1))
    with pytest.raises(RecordRefusedError) as refused:  # at send or at flush: each client has its moment
        send_and_flush(producer, too_big)
    assert refused.value.records == [too_big], "the refused record is named, for the runtime to poison"
    producer.close(5)


def test_seek_reads_again_and_readable_counts_what_is_left(client_settings: PipelineSettings) -> None:
    s = client_settings
    send_all(s, [OutRecord(s.topic_images, None, f"r{n}".encode()) for n in range(24)])
    consumer = joined(s, s.consumer_group_inference)
    got = poll_until(consumer, lambda got: len(got) >= 24)
    assert sum(consumer.readable(10).values()) == 0
    fullest = max({r.partition for r in got}, key=lambda p: sum(r.partition == p for r in got))
    tp = TopicPartition(s.topic_images, fullest)
    on_partition = sorted(r.offset for r in got if r.partition == tp.partition)
    assert len(on_partition) >= 4  # 24 records over 6 partitions
    consumer.seek(tp, on_partition[1])
    assert consumer.readable(10)[tp] == len(on_partition) - 1
    again = poll_until(consumer, lambda a: len(a) >= len(on_partition) - 1)
    assert sorted(r.offset for r in again) == on_partition[1:]
    consumer.seek_to_start(tp)
    again = poll_until(consumer, lambda a: len(a) >= len(on_partition))
    assert sorted(r.offset for r in again) == on_partition
    consumer.close()


def test_lag_covers_every_assigned_partition_and_falls_to_zero(client_settings: PipelineSettings) -> None:
    s = client_settings
    send_all(s, [OutRecord(s.topic_images, None, f"l{n}".encode()) for n in range(8)])
    consumer = joined(s, s.consumer_group_inference)
    poll_until(consumer, lambda got: len(got) >= 8)
    deadline = time.monotonic() + 20
    lag = consumer.lag()
    # Partitions with no record at all are covered too (the lag gauge shows one series per partition held).
    while (len(lag) < s.topic_partitions or any(lag.values())) and time.monotonic() < deadline:
        consumer.poll(0.3, 10)
        lag = consumer.lag()
    consumer.close()
    assert lag == {TopicPartition(s.topic_images, p): 0 for p in range(s.topic_partitions)}


def test_a_flush_with_no_broker_fails_retriably(pipeline_settings: PipelineSettings) -> None:
    # librdkafka only: it connects lazily, so the flush is where a missing broker shows. (kafka-python bootstraps
    # at creation and fails there, retriably, after 30 s: the broker fault tests in tests/faults cover it.)
    from kafka_local import free_port

    s = pipeline_settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "kafka_client": "confluent-kafka"}
    )
    record = OutRecord(s.topic_images, b"k", b"v")
    producer = create_producer_client(s, "tests")
    try:
        with pytest.raises(PipelineError) as failed:
            send_and_flush(producer, record, timeout_s=2)
    finally:
        producer.close(0)
    assert failed.value.retriable, failed.value
    assert "not acknowledged" in str(failed.value)


def test_a_poll_returns_as_soon_as_a_record_is_there_not_when_the_batch_is_full(
    client_settings: PipelineSettings,
) -> None:
    s = client_settings
    heard = Listener()
    consumer = joined(s, s.consumer_group_inference, heard)
    wait_for(lambda: bool(heard.assigned), [consumer])
    send_all(s, [OutRecord(s.topic_images, None, b"alone")])
    timeout_s = 10.0
    started = time.monotonic()
    got = consumer.poll(timeout_s, 100)
    while not got and time.monotonic() - started < timeout_s:  # the record may need one more fetch
        got = consumer.poll(timeout_s, 100)
    waited = time.monotonic() - started
    consumer.close()
    assert [r.value for r in got] == [b"alone"]
    # Far less than one poll's timeout: a client that waited to fill the batch would take all of it.
    assert waited < timeout_s / 2, f"{waited:.1f} s for one record"


def test_the_admin_client_waits_for_a_broker_and_then_says_none_answered(
    client_settings: PipelineSettings,
) -> None:
    from kafka_local import free_port
    from pipeline_core.clients import wait_for_admin
    from pipeline_core.errors import BrokerUnavailableError

    s = client_settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"no Kafka broker answered at 127\.0\.0\.1:"):
        wait_for_admin(s, "tests", timeout_s=3).close()
    assert time.monotonic() - started < 60, "bounded by its timeout and one request's"
