"""The kafka-python wrapper re-seeks a partition whose KIP-320 offset validation has hung (a logic test on a
stand-in for kafka-python's consumer; the failover tests in tests/cluster/ are where the stall was seen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline_core import kafka_python_client
from pipeline_core.kafka_python_client import KafkaPythonConsumer


@dataclass
class State:
    position: OffsetAndMetadata | None
    awaiting_validation: bool = False


@dataclass
class Subscription:
    assignment: dict[TopicPartition, State] = field(default_factory=dict)


class Fetcher:
    _next_in_line_exception_metadata = None
    _next_partition_records = None


class StandIn:
    """What the wrapper touches of a KafkaConsumer: poll, seek, and the subscription state."""

    def __init__(self, assignment: dict[TopicPartition, State]) -> None:
        self._subscription = Subscription(assignment)
        self._fetcher = Fetcher()
        self.seeks: list[tuple[TopicPartition, int]] = []

    def poll(self, **_: Any) -> dict[Any, Any]:
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self._subscription.assignment[tp] = State(OffsetAndMetadata(offset, "", -1))


def test_a_partition_stuck_in_validation_is_sought_again_at_its_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stuck, fine = TopicPartition("t", 0), TopicPartition("t", 1)
    kafka = StandIn(
        {
            stuck: State(OffsetAndMetadata(42, "", 7), awaiting_validation=True),
            fine: State(OffsetAndMetadata(9, "", 7)),
        }
    )
    clock = [1000.0]
    monkeypatch.setattr(kafka_python_client.time, "monotonic", lambda: clock[0])
    consumer = KafkaPythonConsumer(kafka)  # type: ignore[arg-type]
    consumer.poll(0.01, 10)
    clock[0] += kafka_python_client.VALIDATION_STALL_S / 2
    consumer.poll(0.01, 10)
    assert kafka.seeks == [], "a validation in progress is left alone"
    clock[0] += kafka_python_client.VALIDATION_STALL_S
    consumer.poll(0.01, 10)
    assert kafka.seeks == [(stuck, 42)], "sought again where it stood: nothing skipped, nothing read twice"
    clock[0] += kafka_python_client.VALIDATION_STALL_S * 3
    consumer.poll(0.01, 10)
    assert kafka.seeks == [(stuck, 42)]


def test_a_validation_that_completes_resets_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    tp = TopicPartition("t", 0)
    kafka = StandIn({tp: State(OffsetAndMetadata(5, "", 3), awaiting_validation=True)})
    clock = [0.0]
    monkeypatch.setattr(kafka_python_client.time, "monotonic", lambda: clock[0])
    consumer = KafkaPythonConsumer(kafka)  # type: ignore[arg-type]
    consumer.poll(0.01, 10)
    kafka._subscription.assignment[tp].awaiting_validation = False  # validated
    clock[0] += kafka_python_client.VALIDATION_STALL_S * 0.9
    consumer.poll(0.01, 10)
    kafka._subscription.assignment[tp].awaiting_validation = True  # a later leader change
    clock[0] += kafka_python_client.VALIDATION_STALL_S * 0.9
    consumer.poll(0.01, 10)
    assert kafka.seeks == []
