"""Consumer-group lag: how many records of a topic a group has not committed yet, per partition."""

from __future__ import annotations

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.structs import OffsetAndMetadata

from pipeline_core.retry import retry_call

_COORDINATOR_WAIT_S = 10.0


def group_lag(admin: KafkaAdminClient, group_id: str, topic: str) -> dict[int, int]:
    """Records behind the log end for each partition of `topic` (uncommitted partitions count from 0)."""
    return {
        partition: max(0, end - done)
        for partition, (done, end) in group_offsets(admin, group_id, topic).items()
    }


def group_offsets(admin: KafkaAdminClient, group_id: str, topic: str) -> dict[int, tuple[int, int]]:
    """(committed offset, log end offset) for each partition of `topic`; an uncommitted partition is at 0.

    The committed offsets summed over time are the group's progress: how fast it works the topic off.
    """
    partitions = [
        TopicPartition(topic, p["partition_index"]) for p in admin.describe_topics([topic])[0]["partitions"]
    ]
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    committed = _committed(admin, group_id, partitions)
    offsets = {}
    for tp in partitions:
        done = committed.get(tp)
        offsets[tp.partition] = (done.offset if done is not None and done.offset >= 0 else 0, ends[tp].offset)
    return offsets


def _committed(
    admin: KafkaAdminClient, group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    # On a fresh cluster the first group lookup creates __consumer_offsets; its coordinator needs a moment
    # (CoordinatorNotAvailableError is retriable).
    def fetch() -> dict[TopicPartition, OffsetAndMetadata]:
        offsets: dict[TopicPartition, OffsetAndMetadata] = admin.list_group_offsets(
            {group_id: partitions}
        ).get(group_id, {})
        return offsets

    return retry_call(fetch, f"reading the offsets of group {group_id}", timeout_s=_COORDINATOR_WAIT_S)
