"""The filter that keeps librdkafka's reconnect loop from flooding the log."""

from __future__ import annotations

import logging

from pipeline_core.logs import RepeatFilter


def make(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("kafka.librdkafka", logging.ERROR, __file__, 1, message, args, None)


def test_one_record_of_a_kind_per_window_and_the_next_says_how_many_were_dropped() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=60, clock=lambda: now[0])
    first = make("FAIL 127.0.0.1:%d: Connect failed (after %dms in state CONNECT)", 9092, 0)
    assert repeats.filter(first)
    for after_ms in range(1, 200):  # the same trouble, its numbers varying: dropped
        now[0] += 0.05
        assert not repeats.filter(
            make("FAIL 127.0.0.1:%d: Connect failed (after %dms in state CONNECT)", 9092, after_ms)
        )
    other = make("SESSTMOUT: Consumer group session timed out")
    assert repeats.filter(other)  # another kind passes at once
    # Another broker's trouble is other news: addresses and ids are not folded away.
    assert repeats.filter(make("FAIL 127.0.0.1:%d: Connect failed (after %dms in state CONNECT)", 9093, 0))
    now[0] = 60.0
    again = make("FAIL 127.0.0.1:%d: Connect failed (after %dms in state CONNECT)", 9092, 7)
    assert repeats.filter(again)
    assert again.getMessage().endswith("(199 more like it since the last one shown)")
    now[0] = 121.0
    quiet = make("FAIL 127.0.0.1:%d: Connect failed (after %dms in state CONNECT)", 9092, 7)
    assert repeats.filter(quiet) and "more like it" not in quiet.getMessage()
