"""Consumer-group lag: how many records of a topic a group has not committed yet, per partition."""

from __future__ import annotations

from pipeline_core.kafka_client import AdminClient
from pipeline_core.retry import retry_call

_COORDINATOR_WAIT_S = 10.0


def group_lag(admin: AdminClient, group_id: str, topic: str) -> dict[int, int]:
    """Records behind the log end for each partition of `topic` (uncommitted partitions count from 0)."""
    return {
        partition: max(0, end - done)
        for partition, (done, end) in group_offsets(admin, group_id, topic).items()
    }


def group_offsets(admin: AdminClient, group_id: str, topic: str) -> dict[int, tuple[int, int]]:
    """(committed offset, log end offset) for each partition of `topic`; an uncommitted partition is at 0.

    The committed offsets summed over time are the group's progress: how fast it works the topic off.
    """
    # On a fresh cluster the first group lookup creates __consumer_offsets; its coordinator needs a moment
    # (retriable, as the clients say).
    return retry_call(
        lambda: admin.group_offsets(group_id, topic),
        f"reading the offsets of group {group_id}",
        timeout_s=_COORDINATOR_WAIT_S,
    )
