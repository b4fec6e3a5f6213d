"""The confluent-kafka wrapper's own logic: when an error librdkafka reports on its threads stops a client, and
what it reads of the group membership (the wrapper against the real broker: tests/pipeline_core/
test_client_contract.py and test_transactions.py)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline_core import confluent_client
from pipeline_core.confluent_client import _Errors, _membership
from pipeline_core.errors import KafkaAccessError
from pipeline_core.kafka_client import TopicPartition as OurPartition


def authentication_failed() -> KafkaError:
    return KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed")


def test_an_authentication_error_that_passes_stops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka reports a connection lost during the SASL handshake (a broker restarting) as _AUTHENTICATION.
    now = [100.0]
    monkeypatch.setattr(confluent_client.time, "monotonic", lambda: now[0])
    errors = _Errors("tests")
    errors(authentication_failed())
    errors.raise_pending()  # not yet persistent
    now[0] += 2
    errors.succeeded()  # the next call got an answer: the settings are right
    now[0] += 10
    errors.raise_pending()
    # Once answered, a failing handshake is a broker restarting, however long it lasts: logged, never raised.
    errors(authentication_failed())
    now[0] += 60
    errors.raise_pending()


def test_an_authentication_error_that_persists_is_raised_naming_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(confluent_client.time, "monotonic", lambda: now[0])
    errors = _Errors("tests")
    errors(authentication_failed())
    now[0] += confluent_client.ACCESS_ERROR_PERSISTS_S
    with pytest.raises(KafkaAccessError, match="KAFKA_SASL_PASSWORD"):
        errors.raise_pending()
    errors.raise_pending()  # raised once


def test_transport_errors_are_only_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(confluent_client.time, "monotonic", lambda: now[0])
    errors = _Errors("tests")
    errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    now[0] += 60
    errors.raise_pending()


def test_the_membership_is_read_from_librdkafkas_group_metadata() -> None:
    consumer = Consumer({"group.id": "the-group", "bootstrap.servers": "127.0.0.1:9"})
    try:
        fresh = consumer.consumer_group_metadata()  # not joined yet: no generation, no member id
    finally:
        consumer.close()
    assert _membership(fresh) == (-1, "")
    joined = b"CGMDv2:" + (7).to_bytes(4, sys.byteorder, signed=True) + b"the-group\0rdkafka-1234\0\x01"
    assert _membership(joined) == (7, "rdkafka-1234")
    assert _membership(b"CGMDv9:whatever") is None  # a form not known here is left to the coordinator
    assert _membership(object()) is None


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> list[tuple[str, bytes]]:
        return []


def bare_wrapper() -> confluent_client.ConfluentConsumer:
    """The wrapper with what its __init__ sets, but no librdkafka client: the test gives it a fake one."""
    wrapper = object.__new__(confluent_client.ConfluentConsumer)
    wrapper._errors = _Errors("tests")
    wrapper._sought, wrapper._revoked_in_poll, wrapper._pending_seeks = {}, set(), {}
    wrapper._listener_error = None
    return wrapper


class RebalancingConsumer:
    """librdkafka's Consumer as the wrapper sees it through one eager rebalance: the first poll's callbacks
    revoke every partition and assign them straight back, and seeking `refuse_seeks` times fails with _STATE
    (a partition that is not fetching yet)."""

    def __init__(self, wrapper: confluent_client.ConfluentConsumer, refuse_seeks: int) -> None:
        self.wrapper = wrapper
        self.refuse_seeks = refuse_seeks
        self.seeks: list[tuple[str, int, int]] = []
        self.polls = 0
        self.owned = [TopicPartition("images", 0), TopicPartition("images", 1)]

    def poll(self, timeout: float) -> FakeMessage:
        self.polls += 1
        if self.polls == 1:
            self.wrapper._revoked_in_poll |= {OurPartition("images", 0)}  # revoked and assigned again
            return FakeMessage("images", 1, 9)
        return FakeMessage("images", 0, 5)

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return [FakeMessage("images", 0, 5), FakeMessage("images", 0, 6)] if self.polls == 1 else []

    def assignment(self) -> list[TopicPartition]:
        return self.owned

    def seek(self, tp: TopicPartition) -> None:
        if self.refuse_seeks:
            self.refuse_seeks -= 1
            raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def test_messages_of_a_partition_assigned_again_within_a_poll_are_read_again_even_when_the_seek_fails() -> (
    None
):
    """An eager rebalance within one poll: the messages of the partition it revoked and gave back are dropped
    (librdkafka's position is past them) and the partition is sought back to the first of them. If that seek
    fails, the other partitions' messages are still handed over, and the seek is tried again at each poll,
    which hands over nothing of that partition until it succeeds: nothing is skipped."""
    wrapper = bare_wrapper()
    fake = RebalancingConsumer(wrapper, refuse_seeks=2)
    wrapper._consumer = fake  # type: ignore[assignment]
    first = wrapper.poll(0.1, 10)
    assert [(r.partition, r.offset) for r in first] == [(1, 9)], "the other partition's record is handed over"
    # The seek, tried again, still fails: that partition's messages are not handed over, and polls go on.
    assert wrapper.poll(0.1, 10) == []
    assert fake.polls == 2 and fake.seeks == []
    again = wrapper.poll(0.1, 10)
    assert fake.seeks == [("images", 0, 5)], "sought back to the first message dropped"
    assert [(r.partition, r.offset) for r in again] == [(0, 5)]


class AssigningConsumer(RebalancingConsumer):
    """A poll whose assignment callback runs inside it, as librdkafka's do."""

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.on_assign = on_assign

    def poll(self, timeout: float) -> FakeMessage:
        self.polls += 1
        self.on_assign(self, [TopicPartition("images", 0)])
        return FakeMessage("images", 0, 5)

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return [FakeMessage("images", 0, 6)]


class FailingListener:
    def on_assigned(self, partitions: set[OurPartition]) -> None:
        raise RuntimeError("a bug in the listener")

    def on_revoked(self, partitions: set[OurPartition]) -> None:
        pass


def test_a_rebalance_listener_that_raises_inside_a_poll_loses_none_of_its_messages() -> None:
    """Raised inside librdkafka's poll, the error would make confluent-kafka destroy the message that poll took
    (the position already past it). The wrapper keeps the error, seeks back to what it did not hand over, then
    raises it: the run ends on the bug, and the committed offsets still point at those messages."""
    wrapper = bare_wrapper()
    fake = AssigningConsumer(wrapper, refuse_seeks=0)
    wrapper._consumer = fake  # type: ignore[assignment]
    wrapper.subscribe(["images"], FailingListener())
    with pytest.raises(RuntimeError, match="a bug in the listener"):
        wrapper.poll(0.1, 10)
    assert fake.seeks == [("images", 0, 5)]
