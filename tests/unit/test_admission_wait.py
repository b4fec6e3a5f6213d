"""Admission by expected wait: the logic on measured numbers (the broker-backed tests are in
tests/producer_api/test_admission.py, the load runs in docs/benchmarks.md)."""

from __future__ import annotations

import math

import pytest

from producer_api.admission import Admission, OverloadedError
from producer_api.settings import ApiSettings


def admission(**settings: object) -> Admission:
    """A gate judging every image by the wait (no floor) unless the test asks for one."""
    return Admission(ApiSettings(**({"admission_min_backlog": 0} | settings)))  # type: ignore[arg-type]


def test_until_the_throughput_is_known_only_the_count_limit_applies() -> None:
    gate = admission(max_queue_wait_s=0.5, max_backlog_images=10)
    assert gate.expected_wait_s(2) == 0  # nothing waiting: no wait, whatever the pace
    gate.admitted(1)
    assert math.isnan(gate.expected_wait_s(2))  # two ahead of the second, at an unknown pace
    gate.admitted(8)
    gate.check(1)
    with pytest.raises(OverloadedError) as refused:
        gate.check(2)
    assert refused.value.retry_after_s >= 1


def test_uploads_that_would_wait_too_long_are_refused_with_when_to_come_back() -> None:
    gate = admission(max_queue_wait_s=0.5, max_backlog_images=1000)
    gate._learn_throughput(elapsed_s=1.0, done=20, backlog_before=100)  # busy: 20 images/s
    assert gate.throughput == 20
    gate.admitted(9)  # 9 waiting: one more waits 0.5 s
    gate.check(1)
    gate.admitted(11)  # 20 waiting: one more would wait 1.0 s
    with pytest.raises(OverloadedError) as refused:
        gate.check(1)
    assert "would wait 1.0 s" in str(refused.value)
    assert refused.value.retry_after_s == 1  # 0.5 s over the limit, rounded up
    gate.admitted(200)
    with pytest.raises(OverloadedError) as refused:
        gate.check(1)
    assert refused.value.retry_after_s == math.ceil((220 / 20) - 0.5)


def test_idle_progress_does_not_lower_the_throughput_and_a_slower_busy_spell_lowers_it_slowly() -> None:
    gate = admission()
    gate._learn_throughput(elapsed_s=1.0, done=40, backlog_before=100)
    assert gate.throughput == 40
    gate._learn_throughput(elapsed_s=1.0, done=0, backlog_before=0)  # idle: says nothing of capacity
    assert gate.throughput == 40
    for _ in range(10):  # the consumers work at half that pace while they have work
        gate._learn_throughput(elapsed_s=1.0, done=20, backlog_before=100)
    assert 20 < gate.throughput < 40
    for _ in range(200):
        gate._learn_throughput(elapsed_s=1.0, done=20, backlog_before=100)
    assert gate.throughput == pytest.approx(20)


def test_commits_in_steps_are_averaged_over_the_window() -> None:
    # Exactly-once commits a transaction's worth at a time: 0, 0, 30, 0, 0, 30 ... per quarter second.
    gate = admission()
    for step in range(16):
        gate._learn_throughput(elapsed_s=0.25, done=30 if step % 3 == 2 else 0, backlog_before=50)
    assert gate.throughput == pytest.approx(40, rel=0.2)


def test_both_limits_off_admit_everything() -> None:
    gate = admission(max_queue_wait_s=0, max_backlog_images=0)
    gate._learn_throughput(elapsed_s=1.0, done=1, backlog_before=10)
    gate.admitted(10_000)
    gate.check(100)


def test_an_empty_backlog_admits_however_slow_the_consumers_last_were() -> None:
    # The consumers stalled (a restart) while images waited: the throughput fell near zero. Once the backlog is
    # worked off, an upload must be admitted, or the API would shed for ever and never measure again.
    gate = admission(max_queue_wait_s=0.5)
    gate._learn_throughput(elapsed_s=1.0, done=1, backlog_before=100)
    for _ in range(1000):
        gate._learn_throughput(elapsed_s=1.0, done=0, backlog_before=100)
    assert gate.throughput < 0.1
    gate.check(1)
    assert gate.expected_wait_s(1) == 0
    gate.admitted(1)
    with pytest.raises(OverloadedError):
        gate.check(1)


def test_an_idle_system_admits_an_upload_of_many_images_however_slow_the_consumers_last_were() -> None:
    # A slow first spell (a model warming up) taught a low throughput; then the backlog emptied. An upload of
    # four images must still be admitted: judged by its own images it would wait 3 / 2 = 1.5 s, be refused,
    # and, nothing being admitted, the estimate would never rise again (CI saw a benchmark shed everything).
    gate = admission(max_queue_wait_s=0.5, max_backlog_images=1000)
    gate._learn_throughput(elapsed_s=1.0, done=2, backlog_before=10)
    assert gate.throughput == 2
    gate.check(4)
    assert gate.expected_wait_s(4) == 0
    gate.admitted(4)
    with pytest.raises(OverloadedError):
        gate.check(4)  # now 4 are ahead: 7 / 2 s


def test_below_the_floor_every_upload_is_admitted_and_above_it_the_wait_decides() -> None:
    gate = admission(max_queue_wait_s=0.5, max_backlog_images=1000, admission_min_backlog=32)
    gate._learn_throughput(elapsed_s=1.0, done=4, backlog_before=40)  # a slow spell: 4 images/s
    gate.admitted(24)
    gate.check(8)  # 32 waiting: at the floor, admitted however slow the estimate
    assert gate.expected_wait_s(8) == 0
    gate.admitted(8)
    with pytest.raises(OverloadedError):
        gate.check(4)  # past it: 35 ahead at 4/s


def test_the_throughput_is_learnt_only_from_a_backlog_that_keeps_the_consumers_busy() -> None:
    # Below the floor the consumers are not all busy: the rate says how fast images came, not what they can do.
    gate = admission(admission_min_backlog=32)
    gate._learn_throughput(elapsed_s=1.0, done=10, backlog_before=12)
    assert math.isnan(gate.throughput)
    gate._learn_throughput(elapsed_s=1.0, done=90, backlog_before=40)
    assert gate.throughput == 90


def test_no_estimate_comes_from_less_than_a_second_of_busy_measures() -> None:
    # A quarter-second measure holds zero or one commit step: taken alone as the first estimate, one consumer's
    # commit of 4 images read as 16 images/s, and admission held a system at half its capacity.
    gate = admission()
    for _ in range(3):
        gate._learn_throughput(elapsed_s=0.25, done=4, backlog_before=100)
        assert math.isnan(gate.throughput)
    gate._learn_throughput(elapsed_s=0.25, done=36, backlog_before=100)
    assert gate.throughput == pytest.approx(48)


def test_at_least_once_finished_work_not_yet_committed_is_not_counted_as_waiting() -> None:
    # At 100 images/s, committing every 200 ms, the committed offsets trail up to 20 finished images.
    def gate_for(guarantee: str) -> Admission:
        gate = admission(
            max_queue_wait_s=0.5,
            max_backlog_images=1000,
            admission_min_backlog=32,
            processing_guarantee=guarantee,
            commit_interval_ms=200,
        )
        gate._learn_throughput(elapsed_s=1.0, done=100, backlog_before=200)
        gate.admitted(50)
        return gate

    at_least_once, exactly_once = gate_for("at-least-once"), gate_for("exactly-once")
    assert at_least_once.expected_wait_s(4) == pytest.approx(33 / 100)  # 30 waiting, then these 4
    at_least_once.check(4)
    assert exactly_once.expected_wait_s(4) == pytest.approx(53 / 100)
    with pytest.raises(OverloadedError):
        exactly_once.check(4)
    at_least_once.admitted(40)  # 70 waiting now: past the limit however the trail is counted
    with pytest.raises(OverloadedError):
        at_least_once.check(4)


def test_at_least_once_the_throughput_is_learnt_only_when_enough_is_waiting_past_the_commit_trail() -> None:
    gate = admission(admission_min_backlog=32, processing_guarantee="at-least-once", commit_interval_ms=200)
    gate._learn_throughput(elapsed_s=1.0, done=100, backlog_before=200)
    assert gate.throughput == 100
    for _ in range(200):  # 40 in the backlog, 20 of them finished: the consumers were not all busy
        gate._learn_throughput(elapsed_s=1.0, done=30, backlog_before=40)
    assert gate.throughput == 100
