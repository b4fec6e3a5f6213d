"""The SQLite store on its own: one record per job, seq order, feedback once per record, thread safety."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sink_helpers import prediction

from pipeline_core.events import FeedbackEvent, Record
from results_sink.sqlite_store import SqliteResultStore
from results_sink.store import StoreError, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteResultStore]:
    opened = SqliteResultStore.open(str(tmp_path / "nested" / "dir" / "results.db"))
    yield opened
    opened.close()


def test_purge_deletes_only_what_was_stored_before_the_cut(store: SqliteResultStore) -> None:
    from results_sink.retention import purge_once
    from results_sink.settings import SinkSettings

    store.write_batch([prediction("old")])
    store.add_feedback([Record("feedback", 0, 1, None, FeedbackEvent(report="old", received_at=1.0))])
    time.sleep(0.05)
    cut = time.time()
    store.write_batch([prediction("new")])
    store.add_feedback([Record("feedback", 0, 2, None, FeedbackEvent(report="new", received_at=2.0))])

    assert store.purge(None, None) == (0, 0), "None keeps everything"
    assert store.purge(cut, cut) == (1, 1)
    assert store.get("old") is None and store.get("new") is not None
    assert [f.report for f in store.feedback(10)] == ["new"]
    settings = SinkSettings(_env_file=None, results_retention_s=0, feedback_retention_s=0)  # type: ignore[call-arg]
    assert purge_once(store, settings, now=time.time() + 10**9) == (0, 0), "0 keeps them for ever"
    settings = SinkSettings(_env_file=None, results_retention_s=60, feedback_retention_s=60)  # type: ignore[call-arg]
    assert purge_once(store, settings, now=time.time() + 120) == (1, 1)
    assert store.get("new") is None


@pytest.mark.timeout(60)
def test_a_job_is_stored_once_however_often_it_is_written(store: SqliteResultStore) -> None:
    first = store.write_batch([prediction("a"), prediction("b"), prediction("a", label="other")])
    again = store.write_batch([prediction("b"), prediction("c", status="failed")])

    assert [r.job_id for r in first] == ["a", "b"]
    assert [r.job_id for r in again] == ["c"]
    stored_a = store.get("a")
    assert stored_a is not None
    assert stored_a.event.label == "tabby"  # the first result of a job wins
    assert store.get("missing") is None


@pytest.mark.timeout(60)
def test_results_after_filters_by_job_and_seq_and_orders_by_seq(store: SqliteResultStore) -> None:
    stored = store.write_batch([prediction(j) for j in ("a", "b", "c", "d")])
    seq = {r.job_id: r.seq for r in stored}
    assert seq["a"] < seq["b"] < seq["c"] < seq["d"]

    assert [r.job_id for r in store.results_after(["d", "b", "a", "x"], 0)] == ["a", "b", "d"]
    assert [r.job_id for r in store.results_after(["d", "b", "a"], seq["a"])] == ["b", "d"]
    assert store.results_after(["a", "b"], seq["d"]) == []
    assert store.results_after([], 0) == []


@pytest.mark.timeout(60)
def test_results_after_handles_more_ids_than_one_statement_binds(store: SqliteResultStore) -> None:
    ids = [f"job-{n:05d}" for n in range(2500)]
    store.write_batch([prediction(j) for j in ids])

    got = store.results_after(list(reversed(ids)), 0)

    assert [r.job_id for r in got] == ids


@pytest.mark.timeout(60)
def test_feedback_is_stored_once_per_record(store: SqliteResultStore) -> None:
    report = Record("feedback", 0, 7, None, FeedbackEvent(report="wrong label", job_id="a", received_at=1.5))
    other = Record("feedback", 0, 8, None, FeedbackEvent(report="thanks", received_at=2.5))

    assert store.add_feedback([report, other]) == 2
    assert store.add_feedback([report]) == 0
    assert [(f.report, f.job_id) for f in store.feedback(10)] == [("thanks", None), ("wrong label", "a")]
    assert len(store.feedback(1)) == 1


@pytest.mark.timeout(60)
def test_store_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "results.db")
    first = SqliteResultStore.open(path)
    first.write_batch([prediction("a")])
    first.close()
    first.close()  # idempotent
    again = SqliteResultStore.open(path)
    try:
        assert again.write_batch([prediction("a"), prediction("b")])[0].job_id == "b"
        with pytest.raises(StoreError):
            first.get("a")
    finally:
        again.close()


@pytest.mark.timeout(60)
def test_reads_from_many_threads_while_one_writes(store: SqliteResultStore) -> None:
    ids = [f"job-{n}" for n in range(300)]
    errors: list[BaseException] = []

    def write() -> None:
        for start in range(0, len(ids), 10):
            store.write_batch([prediction(j) for j in ids[start : start + 10]])

    def read() -> None:
        try:
            for _ in range(50):
                seqs = [r.seq for r in store.results_after(ids, 0)]
                assert seqs == sorted(seqs)
        except BaseException as e:  # handed to the test thread below
            errors.append(e)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(store.results_after(ids, 0)) == 300


@pytest.mark.timeout(60)
def test_open_store_by_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/by-url.db")
    store.close()
    assert (tmp_path / "by-url.db").exists()


def test_a_shadow_models_results_are_kept_apart_from_the_primarys(store: SqliteResultStore) -> None:
    store.write_batch([prediction("a")])
    new = store.write_shadow_batch([prediction("a", label="tiger_cat"), prediction("b"), prediction("a")])
    assert [r.job_id for r in new] == ["a", "b"], "one shadow result per job, the first"
    assert store.write_shadow_batch([prediction("b", label="lynx")]) == []

    stored_a, shadow_a = store.get("a"), store.get_shadow("a")
    assert stored_a is not None and shadow_a is not None
    assert (stored_a.event.label, shadow_a.event.label) == ("tabby", "tiger_cat")
    assert store.get("b") is None, "a shadow's answer is never the job's result"
    assert store.results_after(["a", "b"], 0) == [stored_a]
    assert [r.job_id for r in store.shadows_of(["b", "a", "missing"])] == ["a", "b"]
    assert [r.job_id for r in store.recent(10, shadow=True)] == ["b", "a"], "newest first"
    assert [r.job_id for r in store.recent(1, shadow=True)] == ["b"]
    assert [r.job_id for r in store.recent(10)] == ["a"]

    assert store.purge(time.time() + 1, None) == (1, 0)
    assert store.get_shadow("a") is None and store.recent(10, shadow=True) == [], "purged with the results"
