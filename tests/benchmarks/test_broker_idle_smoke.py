"""The broker-idle benchmark keeps working: short windows on a broker and a system of its own. No timing is
asserted; timings vary by machine."""

from __future__ import annotations

import pytest

from benchmarks import broker_idle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_broker_idle_measures_the_broker_with_each_service_stopped_in_turn() -> None:
    rows = broker_idle.measure(warmup_s=0.5, window_s=1.0)
    assert [connected for connected, _ in rows] == [
        "all services",
        "without api",
        "without api, inference-1",
        "without api, inference-1, inference-2",
        "without api, inference-1, inference-2, sink",
    ]
    first, last = rows[0][1], rows[-1][1]
    assert set(first) == {"broker", *broker_idle.STOP_ORDER}, "every process measured while it runs"
    assert set(last) == {"broker"}, "a stopped service is no longer measured"
    assert all(ms >= 0 for _, cpu in rows for ms in cpu.values())
