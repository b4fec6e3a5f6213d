"""Offset commits spaced out in time, for at-least-once processing.

Committing after every batch made offset commits a third of all the requests the broker served at saturation,
each a round trip the consumer waited for. `OffsetCommitter` commits what is done at most every `interval_s`
instead: a crash then re-delivers up to that much finished work, and nothing unfinished is ever committed.
(With exactly-once processing the runtime commits offsets inside each batch's transaction instead.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

from pipeline_core.errors import CommitRefusedError, PipelineError
from pipeline_core.events import RawRecord
from pipeline_core.kafka_client import ConsumerClient, TopicPartition, next_offsets

logger = logging.getLogger(__name__)

# How long one commit may block the poll loop. The client retries within it; past it, the next turn tries again.
COMMIT_TIMEOUT_S = 5.0


class OffsetCommitter:
    """Collects the offsets of finished batches and commits them at most every `interval_s` (0: at once).

    Call `done()` after a batch's work is safe, `maybe_commit()` on every turn of the poll loop (empty polls
    too, so an idle consumer still commits what it finished), `commit()` before closing, and `forget()` from
    the rebalance listener: kafka-python 3 runs listeners on its network loop, where a synchronous commit
    cannot complete, so the finished but uncommitted records of a revoked partition are re-delivered to its
    next owner instead.
    """

    def __init__(self, consumer: ConsumerClient, interval_s: float) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._pending: dict[TopicPartition, int] = {}
        self._lock = threading.Lock()  # the listener runs on the client's network thread
        self._committed_at = time.monotonic()

    @property
    def pending(self) -> dict[TopicPartition, int]:
        """Offsets finished but not committed yet, by partition."""
        with self._lock:
            return dict(self._pending)

    def done(self, records: Sequence[RawRecord]) -> None:
        """The work of `records` is safe: their offsets may be committed."""
        self._add(next_offsets(records))
        if self._interval_s <= 0:
            self.commit()

    def maybe_commit(self) -> None:
        """Commit if something is pending and the interval has passed since the last commit."""
        if self._pending and time.monotonic() - self._committed_at >= self._interval_s:
            self.commit()

    def commit(self) -> bool:
        """Commit everything pending now (a broker round trip, at most `COMMIT_TIMEOUT_S`); whether it worked.

        Never raises: a commit the group refuses because the partitions moved is dropped (their next owner
        re-reads those records), and one that fails because the broker is away is kept for the next attempt.
        Either way the work is safe, and the consumer must go on polling rather than die."""
        with self._lock:
            pending, self._pending = self._pending, {}
        self._committed_at = time.monotonic()
        if not pending:
            return True
        try:
            self._consumer.commit(pending, COMMIT_TIMEOUT_S)
        except CommitRefusedError as e:
            logger.warning(
                "commit of %d partitions' offsets refused (%s); their records will be re-delivered",
                len(pending),
                e,
            )
            return False
        except PipelineError as e:
            self._add(pending)
            logger.warning("commit failed (%s); will try again", e)
            return False
        return True

    def _add(self, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                self._pending[tp] = max(offset, self._pending.get(tp, offset))

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the pending offsets of partitions this member no longer holds."""
        with self._lock:
            for tp in partitions:
                self._pending.pop(tp, None)
