"""The one retry policy: exponential backoff with jitter, bounded in time, logged without flooding the log.

Used wherever a dependency may not be up yet (the broker at start-up, a store that went away) and by the
consumer runtime when a batch cannot be checkpointed. Only errors that say they are retriable are retried
(`PipelineError.retriable`, Kafka's own `retriable` flag); anything else is raised at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pipeline_core.errors import PipelineError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Our own generator: jitter drawn from the module-level one would move the process's shared random state from
# background threads (a property-based test's generator saw its state change under it and failed as flaky).
_jitter = random.Random()  # noqa: S311 - jitter, not cryptography


def is_retriable(error: BaseException) -> bool:
    """Whether trying again later can help: our own errors and kafka-python's say so with `retriable`."""
    if isinstance(error, PipelineError):
        return error.retriable
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    return bool(getattr(error, "retriable", False))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of 'first_s, 2x, 4x ... up to max_s', each with +-20% jitter so that replicas do not retry in step."""

    first_s: float = 0.25
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1-based)."""
        base = min(self.max_s, self.first_s * 2 ** max(0, attempt - 1))
        return float(base * _jitter.uniform(0.8, 1.2))


def should_log(attempt: int) -> bool:
    """Log attempts 1, 2, 4, 8, ...: a dependency that stays away for an hour leaves ~12 lines, not thousands."""
    return attempt & (attempt - 1) == 0


def retry_call(
    fn: Callable[[], T],
    what: str,
    *,
    timeout_s: float,
    backoff: Backoff | None = None,
    stopping: threading.Event | None = None,
) -> T:
    """Call `fn` until it returns, retrying retriable errors with backoff for at most `timeout_s`.

    Raises the last error when time is up (or at once if it is not retriable), and `InterruptedError` when
    `stopping` is set meanwhile.
    """
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            pause = (backoff or Backoff()).delay(attempt)
            if not is_retriable(e) or time.monotonic() + pause > deadline:
                logger.error("%s failed after %d attempts: %s: %s", what, attempt, type(e).__name__, e)
                raise
            if should_log(attempt):
                logger.info("%s: attempt %d failed (%s: %s); retrying", what, attempt, type(e).__name__, e)
        if stopping is not None:
            if stopping.wait(pause):
                raise InterruptedError(f"{what}: stopped while retrying")
        else:
            time.sleep(pause)
