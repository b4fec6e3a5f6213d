"""Logging set-up, called once at each entry point, and the filter that keeps a client's reconnect loop from
flooding the log."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# What differs between two reports of the same trouble: timings and librdkafka's own suppression counts (not
# addresses, broker ids or partitions: trouble with another broker is other news).
_VARYING = re.compile(r"\d+ ?ms\b|\d+ identical error\(s\) suppressed")
_MAX_KINDS = 1000


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr, one line each, with time, level and logger name."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    # kafka-python logs every connection attempt at INFO; its warnings and errors are what operators need.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


class RepeatFilter(logging.Filter):
    """Lets one record of a kind through per `window_s`; the next one let through says how many were dropped
    since the last one shown. (The count of a kind that never comes back is not logged.)

    A kind is the message with its timings taken out: librdkafka reports every failed reconnect of every
    connection (seen: one line each 50 ms per client while a broker was down), and "after 0ms" and "after 3ms"
    are the same news. Thread-safe: librdkafka logs from its own threads.
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._shown: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _VARYING.sub("#", record.getMessage())
        now = self._clock()
        with self._lock:
            if now - self._shown.get(kind, -self._window_s) < self._window_s:
                self._dropped[kind] = self._dropped.get(kind, 0) + 1
                return False
            self._shown[kind] = now
            dropped = self._dropped.pop(kind, 0)
            if len(self._shown) > _MAX_KINDS:  # kinds are few; bounded all the same
                self._shown = {k: t for k, t in self._shown.items() if now - t < self._window_s}
                self._dropped = {k: n for k, n in self._dropped.items() if k in self._shown}
                if len(self._shown) > _MAX_KINDS:
                    self._shown, self._dropped = {kind: now}, {}
        if dropped:
            record.msg = f"{record.getMessage()} ({dropped} more like it since the last one shown)"
            record.args = None
        return True
