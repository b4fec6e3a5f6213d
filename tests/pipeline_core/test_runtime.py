"""The consumer runtime on in-memory fake clients: checkpoints, the poison policy, retries, exactly-once.

No broker: these are unit tests of the runtime's logic (`make test-fast`). The same runtime against the real
broker is tested through the services (tests/inference_consumer, tests/results_sink, tests/faults).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from fake_kafka import FakeBroker, FakeConsumer, FakeProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_core.errors import BrokerUnavailableError, KafkaAccessError, PipelineError
from pipeline_core.events import RawRecord, Record
from pipeline_core.kafka_client import OutRecord
from pipeline_core.retry import Backoff
from pipeline_core.runtime import (
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SOURCE_HEADER,
    REASON_LIMIT,
    ConsumerRuntime,
    Failed,
    RuntimeConfig,
)

IN, OUT, DLQ = "in", "out", "dead"


class Flaky(PipelineError):
    """A dependency that is away (retriable)."""

    retriable = True


def decode_text(record: RawRecord) -> str:
    if record.value is None:
        raise ValueError("no value")
    return record.value.decode("utf-8")


class EchoHandler:
    """Upper-cases each text to OUT; 'boom' raises, 'fail' is reported Failed, and `flaky` raises retriably."""

    def __init__(self) -> None:
        self.flaky = 0
        self.poisoned: list[tuple[str, str]] = []

    def handle(self, batch: Sequence[Record[Any]]) -> list[OutRecord | Failed]:
        if self.flaky:
            self.flaky -= 1
            raise Flaky("store away")
        out: list[OutRecord | Failed] = []
        for r in batch:
            if r.value == "boom":
                raise RuntimeError("handler bug on " + "x" * 10_000)
            if r.value == "fail":
                out.append(Failed(r, "cannot do " + "y" * 10_000))
            elif r.value == "huge":
                out.append(OutRecord(OUT, r.key, b"z" * 5_000, src(r), r))
            else:
                out.append(OutRecord(OUT, r.key, r.value.upper().encode(), src(r), r))
        return out

    def on_poison(self, record: RawRecord, reason: str) -> list[OutRecord]:
        self.poisoned.append((record.where, reason))
        return [OutRecord(OUT, record.key, b"FAILED", src(record), record)] if record.key else []


def src(record: Record[Any]) -> tuple[tuple[str, bytes], ...]:
    """The header that says which input an output was made from."""
    return (("src", record.where.encode()),)


def make_runtime(
    broker: FakeBroker, handler: EchoHandler, *, exactly_once: bool, max_records: int = 10
) -> tuple[ConsumerRuntime, dict[str, Any]]:
    made: dict[str, Any] = {"producers": [], "consumers": []}

    def consumer() -> FakeConsumer:
        c = FakeConsumer(broker, "group")
        made["consumers"].append(c)
        return c

    def producer(tid: str | None) -> FakeProducer:
        p = FakeProducer(broker, tid)
        made["producers"].append(p)
        return p

    config = RuntimeConfig(
        role="test",
        group_id="group",
        decoders={IN: decode_text},
        dead_letter_topic=DLQ,
        output_limits={OUT: 3_000, DLQ: 3_000},
        exactly_once=exactly_once,
        transactional_id="tx-1" if exactly_once else None,
        max_records=max_records,
        poll_timeout_s=0.01,
        commit_interval_s=0,
        backoff=Backoff(first_s=0.001, max_s=0.01),
    )
    return ConsumerRuntime(config, handler, consumer, producer), made


def run_until(runtime: ConsumerRuntime, done: Callable[[], bool], timeout_s: float = 10) -> None:
    failure: list[BaseException] = []

    def target() -> None:
        try:
            runtime.run()
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.005)
    runtime.stop()
    thread.join(5)
    assert not thread.is_alive(), "the runtime stops within 5 s of stop()"
    if failure:
        raise failure[0]
    assert done(), "condition not reached"


def feed(broker: FakeBroker, values: Sequence[bytes | None], key: bytes | None = b"k") -> None:
    for n, value in enumerate(values):
        broker.append(IN, n % broker.partitions, key, value)


def size(record: RawRecord) -> int:
    """What counts against a topic's limit: key, value and headers."""
    headers = sum(len(k) + len(v or b"") for k, v in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


def committed_all(broker: FakeBroker) -> bool:
    ends = {tp: len(log) for tp, log in broker.logs.items() if tp.topic == IN}
    return all(broker.committed["group"].get(tp, 0) == end for tp, end in ends.items())


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_every_record_becomes_its_output_and_offsets_are_committed(exactly_once: bool) -> None:
    broker = FakeBroker()
    feed(broker, [f"img{n}".encode() for n in range(25)])
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=exactly_once)
    run_until(runtime, lambda: committed_all(broker))
    assert sorted(r.value for r in broker.read(OUT)) == sorted(f"IMG{n}".encode() for n in range(25))
    assert runtime.stats.records == 25 and runtime.stats.poisoned == 0


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_poison_record_fails_alone_and_the_rest_of_its_batch_is_handled(exactly_once: bool) -> None:
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a", b"boom", b"\xff\xfe not utf-8", None, b"fail", b"b"])
    handler = EchoHandler()
    runtime, _ = make_runtime(broker, handler, exactly_once=exactly_once)
    run_until(runtime, lambda: committed_all(broker))
    values = [r.value for r in broker.read(OUT)]
    assert values.count(b"A") == 1 and values.count(b"B") == 1
    assert values.count(b"FAILED") == 4, "each poisoned record's job gets a failed result"
    dead = broker.read(DLQ)
    assert sorted(dict(r.headers)[DEAD_LETTER_SOURCE_HEADER] for r in dead) == [
        f"{IN}[0]@{n}".encode() for n in (1, 2, 3, 4)
    ]
    for r in dead:
        reason = dict(r.headers)[DEAD_LETTER_REASON_HEADER].decode()
        assert len(reason) <= REASON_LIMIT, "hostile input is never echoed whole"
    assert b"boom" in [r.value for r in dead], "the dead letter keeps the record's bytes"
    assert runtime.stats.poisoned == 4


def test_an_output_too_large_for_its_topic_poisons_its_source_instead_of_being_retried_forever() -> None:
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a", b"huge", b"b"])
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=True)
    run_until(runtime, lambda: committed_all(broker))
    assert [r.value for r in broker.read(OUT)] == [b"A", b"FAILED", b"B"]
    assert all(size(r) <= 3_000 for r in broker.read(OUT))
    assert len(broker.read(DLQ)) == 1


def test_the_broker_refusing_an_output_poisons_its_source_on_the_next_attempt() -> None:
    broker = FakeBroker(partitions=1, limits={OUT: 4_000})  # the topic takes less than the runtime believes
    feed(broker, [b"a", b"huge", b"b"])
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=False)
    runtime.config.output_limits[OUT] = 1_000_000  # type: ignore[index]
    run_until(runtime, lambda: committed_all(broker))
    assert sorted(r.value for r in broker.read(OUT)) == [b"A", b"B", b"FAILED"]
    assert len(broker.read(DLQ)) == 1


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_dependency_away_is_retried_with_backoff_and_nothing_is_lost_or_dead_lettered(
    exactly_once: bool,
) -> None:
    broker = FakeBroker()
    feed(broker, [f"v{n}".encode() for n in range(10)])
    handler = EchoHandler()
    handler.flaky = 7
    runtime, _ = make_runtime(broker, handler, exactly_once=exactly_once, max_records=3)
    run_until(runtime, lambda: committed_all(broker))
    assert sorted(r.value for r in broker.read(OUT)) == sorted(f"V{n}".encode() for n in range(10))
    assert broker.read(DLQ) == []
    assert runtime.stats.retries == 7


def test_outputs_the_broker_did_not_acknowledge_are_sent_again() -> None:
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a", b"b"])
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=False)
    original = FakeProducer.flush
    calls = {"n": 0}

    def fail_first(self: FakeProducer, timeout_s: float) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            self.fail_flushes = 1
        original(self, timeout_s)

    FakeProducer.flush = fail_first  # type: ignore[method-assign]
    try:
        run_until(runtime, lambda: committed_all(broker))
    finally:
        FakeProducer.flush = original  # type: ignore[method-assign]
    assert [r.value for r in broker.read(OUT)] == [b"A", b"B"]
    assert runtime.stats.retries == 1


def test_a_seek_refused_while_rewinding_a_batch_rewinds_to_the_committed_offset_instead() -> None:
    # librdkafka refuses a seek on a partition it is not fetching yet; the loop must survive it and lose nothing.
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a", b"b"])
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=False)
    original_flush, original_seek = FakeProducer.flush, FakeConsumer.seek
    calls = {"flush": 0, "seek": 0}

    def fail_first_flush(self: FakeProducer, timeout_s: float) -> None:
        calls["flush"] += 1
        if calls["flush"] == 1:
            self.fail_flushes = 1
        original_flush(self, timeout_s)

    def refuse_first_seek(self: FakeConsumer, tp: Any, offset: int) -> None:
        calls["seek"] += 1
        if calls["seek"] == 1:
            raise BrokerUnavailableError("seek: Local: Erroneous state", retriable=True)
        original_seek(self, tp, offset)

    FakeProducer.flush = fail_first_flush  # type: ignore[method-assign]
    FakeConsumer.seek = refuse_first_seek  # type: ignore[method-assign]
    try:
        run_until(runtime, lambda: committed_all(broker))
    finally:
        FakeProducer.flush = original_flush  # type: ignore[method-assign]
        FakeConsumer.seek = original_seek  # type: ignore[method-assign]
    # The loop lived on (run_until saw every offset committed); the batch came again from the committed offset.
    assert calls["seek"] == 1
    assert sorted(set(r.value for r in broker.read(OUT))) == [b"A", b"B"], "nothing lost"


def run_with_first_commit_failing(runtime: ConsumerRuntime, broker: FakeBroker, failure: str) -> None:
    """Run until everything is committed, the first transaction's commit failing as `failure` says (aborted,
    `fail_commits`, or gone through with its answer lost, `lose_commit_answers`)."""
    original = FakeProducer.commit_transaction
    calls = {"n": 0}

    def fail_first(self: FakeProducer, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            setattr(self, failure, 1)
        original(self, *args)

    FakeProducer.commit_transaction = fail_first  # type: ignore[method-assign]
    try:
        run_until(runtime, lambda: committed_all(broker))
    finally:
        FakeProducer.commit_transaction = original  # type: ignore[method-assign]


@pytest.mark.parametrize("failure", ["fail_commits", "lose_commit_answers"], ids=["aborted", "answer-lost"])
def test_a_failed_transaction_leaves_nothing_twice_whether_or_not_it_reached_the_broker(failure: str) -> None:
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a", b"b", b"c"])
    runtime, made = make_runtime(broker, EchoHandler(), exactly_once=True, max_records=2)
    run_with_first_commit_failing(runtime, broker, failure)
    # A commit whose answer was lost did go through: rewinding to the batch's start would do it twice; the
    # runtime rewinds to the committed offsets instead.
    assert [r.value for r in broker.read(OUT)] == [b"A", b"B", b"C"], "no output twice, none lost"
    assert runtime.stats.aborted_transactions == 1
    assert len(made["producers"]) == 2, "the failed producer was replaced"
    assert made["producers"][0].closed


def test_a_member_that_cannot_read_its_committed_offsets_after_a_failed_transaction_is_replaced() -> None:
    """After a failed transaction the member must rewind to the committed offsets before it polls again; if the
    brokers never answer that question, it would neither poll nor hear that its partitions moved. After
    `stall_check_s` of failed attempts the consumer is replaced, and the new one starts from the committed
    offsets: nothing lost, nothing twice."""
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a", b"b", b"c"])
    runtime, made = make_runtime(broker, EchoHandler(), exactly_once=True, max_records=2)
    runtime.config = dataclasses.replace(runtime.config, stall_check_s=0.05)
    make_consumer = runtime._consumer_factory

    def first_cannot_read_committed() -> Any:
        consumer = make_consumer()
        if len(made["consumers"]) == 1:  # the first one made

            def unanswered(partitions: Any) -> Any:
                raise BrokerUnavailableError("reading committed offsets: timed out")

            consumer.committed = unanswered
        return consumer

    runtime._consumer_factory = first_cannot_read_committed
    run_with_first_commit_failing(runtime, broker, "fail_commits")
    assert len(made["consumers"]) == 2 and made["consumers"][0].closed, "the stuck member was replaced"
    assert [r.value for r in broker.read(OUT)] == [b"A", b"B", b"C"], "no output twice, none lost"


def test_polls_that_fail_while_the_broker_is_away_are_retried() -> None:
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a"])
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=False)
    original = FakeConsumer.subscribe

    def away_first(self: FakeConsumer, *args: Any) -> None:
        original(self, *args)
        self.fail_polls = 5

    FakeConsumer.subscribe = away_first  # type: ignore[method-assign]
    try:
        run_until(runtime, lambda: committed_all(broker))
    finally:
        FakeConsumer.subscribe = original  # type: ignore[method-assign]
    assert runtime.stats.retries == 5


def test_refused_credentials_end_the_run_with_the_error() -> None:
    broker = FakeBroker(partitions=1)
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=False)

    def refused() -> FakeConsumer:
        raise KafkaAccessError("SASL authentication failed: check KAFKA_SASL_PASSWORD")

    runtime._consumer_factory = refused
    with pytest.raises(KafkaAccessError, match="KAFKA_SASL_PASSWORD"):
        runtime.run()
    assert runtime.state.startswith("stopped by KafkaAccessError")


def test_stop_commits_and_closes_both_clients() -> None:
    broker = FakeBroker(partitions=1)
    feed(broker, [b"a"])
    runtime, made = make_runtime(broker, EchoHandler(), exactly_once=False)
    run_until(runtime, lambda: bool(broker.read(OUT)))
    assert made["consumers"][0].closed and made["producers"][0].closed
    assert committed_all(broker)


headers_strategy = st.lists(
    st.tuples(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=3_000))), max_size=4
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=80)),
            st.one_of(st.none(), st.binary(max_size=4_000), st.sampled_from([b"boom", b"fail", b"huge"])),
            headers_strategy,
        ),
        min_size=1,
        max_size=12,
    ),
    exactly_once=st.booleans(),
)
def test_hostile_records_never_stop_the_runtime_and_every_record_is_accounted_for(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]], exactly_once: bool
) -> None:
    broker = FakeBroker(partitions=2)
    for n, (key, value, headers) in enumerate(records):
        broker.append(IN, n % 2, key, value, headers)
    runtime, _ = make_runtime(broker, EchoHandler(), exactly_once=exactly_once, max_records=5)
    run_until(runtime, lambda: committed_all(broker))
    inputs = sorted(r.where.encode() for r in broker.read(IN))
    made = [dict(r.headers)["src"] for r in broker.read(OUT) if "src" in dict(r.headers)]
    dead = [dict(r.headers)[DEAD_LETTER_SOURCE_HEADER] for r in broker.read(DLQ)]
    assert sorted(set(made) | set(dead)) == inputs, "every input became an output or a dead letter"
    assert len(dead) == len(set(dead)) and len(made) == len(set(made)), "none twice"
    assert len(dead) == runtime.stats.poisoned
    assert all(size(r) <= 3_000 for r in broker.read(OUT) + broker.read(DLQ)), (
        "no output over its topic's limit"
    )


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_stalled_client_is_fetched_again_then_replaced_and_nothing_is_lost(exactly_once: bool) -> None:
    """A client whose polls return nothing while the brokers hold records for it (kafka-python after a broker's
    kill): after `stall_check_s` the partitions are fetched again from the committed offsets, and a check later
    the consumer is replaced; every record is then handled once."""
    broker = FakeBroker()
    runtime, made = make_runtime(broker, EchoHandler(), exactly_once=exactly_once)
    runtime.config = dataclasses.replace(runtime.config, stall_check_s=0.05)
    feed(broker, [b"a", b"b"])
    stuck_at: list[int] = []  # the stuck consumer's poll count when it was made stuck
    fed = []

    def stall_then_done() -> bool:
        first = made["consumers"][0]
        if not stuck_at and committed_all(broker):
            first.stuck = True  # from here on its polls return nothing
            stuck_at.append(first.polls)
            return False
        # The late records only once a poll has begun after the stall (one in progress might still read them).
        if stuck_at and not fed and first.polls > stuck_at[0] + 1:
            feed(broker, [f"late{n}".encode() for n in range(6)])
            fed.append(time.monotonic())
            return False
        return bool(fed) and committed_all(broker)

    run_until(runtime, stall_then_done)
    assert len(made["consumers"]) == 2, "the stuck one, and its replacement"
    assert made["consumers"][0].closed
    outputs = sorted(r.value for r in broker.read(OUT))
    assert outputs == sorted([b"A", b"B", *(f"LATE{n}".encode() for n in range(6))])


def test_a_consumer_whose_stall_checks_go_unanswered_is_not_ready_until_they_are() -> None:
    """A client that cannot learn where its partitions start (the brokers will not say: confluent-kafka after
    the broker was killed mid-transaction): empty polls, its stall checks unanswered. From the second such
    check in a row it reports not ready; once checks are answered the stall is handled as any other (fetched
    again, then a new consumer), and with records flowing it is ready again. Nothing is replaced for the
    unanswered checks themselves."""
    broker = FakeBroker()
    runtime, made = make_runtime(broker, EchoHandler(), exactly_once=True)
    runtime.config = dataclasses.replace(runtime.config, stall_check_s=0.05)
    make_consumer = runtime._consumer_factory
    reasons: list[str | None] = []  # readiness as each stall check of the first consumer began

    def unreadable_for_three_checks() -> Any:
        first = not made["consumers"]
        consumer = make_consumer()
        if first:  # its replacement, once the answered checks found it stalled, is a healthy one
            consumer.offsets_unreadable = 3
            consumer.stuck = True
            readable = consumer.readable

            def readable_noting_readiness(timeout_s: float) -> Any:
                reasons.append(runtime.not_ready_reason())
                return readable(timeout_s)

            consumer.readable = readable_noting_readiness
        return consumer

    runtime._consumer_factory = unreadable_for_three_checks
    feed(broker, [f"img{n}".encode() for n in range(8)])
    ready_when_done: list[str | None] = []

    def done() -> bool:
        reason = runtime.not_ready_reason()
        if committed_all(broker) and not ready_when_done:
            ready_when_done.append(reason)
        return bool(ready_when_done)

    run_until(runtime, done)
    # Checks 1-3 unanswered; the 4th answered (records waiting: fetched again), the 5th too (a new consumer).
    assert reasons[0] is None and reasons[1] is None, "one unanswered check is not yet a reason"
    assert "stall checks go unanswered" in (reasons[2] or "") and "unanswered" in (reasons[3] or "")
    assert made["consumers"][0].stall_checks == 5
    assert len(made["consumers"]) == 2 and len(made["producers"]) == 1
    assert ready_when_done == [None], "ready again once records flow"
    assert sorted(r.value for r in broker.read(OUT)) == sorted(f"IMG{n}".encode() for n in range(8))


def test_an_idle_topic_is_not_a_stall() -> None:
    broker = FakeBroker()
    runtime, made = make_runtime(broker, EchoHandler(), exactly_once=True)
    runtime.config = dataclasses.replace(runtime.config, stall_check_s=0.02)
    feed(broker, [b"a"])
    started = time.monotonic()
    run_until(runtime, lambda: committed_all(broker) and time.monotonic() - started > 0.3)
    assert len(made["consumers"]) == 1, "nothing to read is no reason to replace a consumer"
