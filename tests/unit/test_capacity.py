"""The capacity model's arithmetic (benchmarks/capacity.py), on small synthetic reports with round numbers."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import capacity
from benchmarks.capacity import Assumptions, plan, read_inputs, requests_per_image

A = Assumptions(
    cores_per_machine=2,
    utilisation=0.5,  # one busy core per machine: machines = ceil(cores)
    image_record_bytes=50_000,
    reference_record_bytes=500,
    replication_factor=3,
    images_per_upload=4,
    inference_batch=4,
    inference_poll=4,
    sink_batch=16,
    nic_bytes_per_s=1e9,
    partition_bytes_per_s=10e6,
    broker_disk_bytes=1e12,
    images_retention_s=3600,
    predictions_retention_s=86_400,
    max_sse_connections=1000,
    long_stream_s=30,
    min_partitions=6,
)


def level(rate: float, fraction: float, rejected: int = 0, **cpu_ms: float) -> dict[str, Any]:
    """A sweep level as pipeline_bench writes it; `cpu_ms` by process name, in ms per image."""
    return {
        "fraction_of_saturation": fraction,
        "completed_images_per_s": rate,
        "rejected": rejected,
        "errors": 0,
        "timed_out": 0,
        "round_trip_ms": {"p50": 50.0, "p99": 400.0},
        "cpu_s_per_image": {_process(name): ms / 1000 for name, ms in cpu_ms.items()},
    }


def _process(name: str) -> str:
    """`inference_1` -> `inference-1`, `load_generator` -> `load generator` (keyword arguments cannot say it)."""
    return name.replace("inference_", "inference-").replace("_", " ")


CPU = {"api": 1.0, "inference_1": 7.0, "inference_2": 7.0, "sink": 2.0, "broker": 1.0, "load_generator": 1.5}


def pipeline_report() -> dict[str, Any]:
    idle = {
        k: v * 2 for k, v in CPU.items()
    }  # a quieter level: more CPU per image (idle costs spread thinner)
    return {
        "machine": {"date": "2026-12-01 10:00 UTC", "cpu": "Test CPU", "cores": 2, "python": "3.11"},
        "smoke": False,
        "model": {"best_batch_size": 4, "model_cpu_ms_per_image": {"4": 10.0}, "ceiling_images_per_s": 190.0},
        "sweep": [
            level(25.0, 0.25, **idle),
            level(100.0, 1.0, **CPU),
            level(90.0, 2.0, rejected=50, **idle),  # shed load: not a level the model may use
        ],
    }


def write_run(batch: int, rate: float, client_ms: float, server_ms: float | None) -> dict[str, Any]:
    return {
        "batch_size": batch,
        "results_per_s": rate,
        "client_cpu_ms_per_result": client_ms,
        "server_cpu_ms_per_result": server_ms,
    }


def store_report() -> dict[str, Any]:
    return {
        "machine": {"date": "2026-12-01 11:00 UTC", "cpu": "Test CPU", "cores": 2},
        "command": "python -m benchmarks.store_bench",
        "smoke": False,
        "prediction_record_bytes": 500,
        "postgres": {
            "server": {"server_version": "17.0", "fsync": "on", "synchronous_commit": "on"},
            "writes": [
                write_run(1, 1_000.0, 0.5, 0.2),
                write_run(16, 8_000.0, 0.3, 0.05),
                write_run(100, 20_000.0, 0.1, 0.02),
            ],
            "notify": [
                {"batch_size": 1, "notifications_per_s": 900.0, "listener_results_per_s": 900.0},
                {"batch_size": 100, "notifications_per_s": 150.0, "listener_results_per_s": 15_000.0},
            ],
            "feed_read": {
                "results_per_s": 40_000.0,
                "client_cpu_ms_per_result": 0.01,
                "server_cpu_ms_per_result": 0.002,
            },
        },
        "sqlite": {"writes": [write_run(1, 300.0, 0.3, None), write_run(16, 3_000.0, 0.2, None)]},
        "sse": {"per_stream_kb": 20.0},
    }


def test_each_role_is_the_sum_of_its_processes_at_the_busiest_level_that_kept_up() -> None:
    m = read_inputs(pipeline_report(), store_report(), A)
    assert m.cpu_ms == {"api": 1.0, "inference": 14.0, "sink": 2.0, "broker": 1.0}
    assert m.level_images_per_s == 100.0 and m.level == "1.0x saturation"
    assert m.load_generator_ms == pytest.approx(1.5)
    assert m.round_trip_p99_s == pytest.approx(0.4)
    assert m.model_ms_per_image == 10.0


def test_store_figures_are_the_best_write_rate_and_the_cpu_at_the_assumed_batch() -> None:
    s = read_inputs(pipeline_report(), store_report(), A).store
    assert (s.pg_write_ceiling, s.pg_write_ceiling_batch) == (20_000.0, 100)
    assert (s.pg_client_ms, s.pg_server_ms) == (0.3, 0.05)  # batch 16, as assumed
    assert (s.sqlite_write_ceiling, s.sqlite_client_ms) == (3_000.0, 0.2)
    assert s.notifications_per_s == 900.0 and s.listener_results_per_s == 15_000.0
    assert s.feed_results_per_s == 40_000.0 and s.sse_kb_per_stream == 20.0
    # No run at the assumed batch: the nearest one on a log scale (batch 10 -> 16, not 1).
    assert (
        read_inputs(pipeline_report(), store_report(), Assumptions(sink_batch=10)).store.pg_client_ms == 0.3
    )


def test_machines_consumers_and_partitions_at_1000_images_per_s() -> None:
    p = plan(1_000, read_inputs(pipeline_report(), store_report(), A), A)
    assert p.cores["api"] == pytest.approx(1.0) and p.machines["api"] == 1
    assert p.cores["inference"] == pytest.approx(14.0) and p.machines["inference"] == 14
    assert p.consumers == 28  # one per core
    # A PostgreSQL replica: the SQLite sink's 2 ms with SQLite's 0.2 ms write swapped for PostgreSQL's 0.3 ms,
    # plus reading all 1,000 results/s from the feed at 0.01 ms: 2.1 cores of own work over (1 - 0.01) each.
    assert p.cpu_ms["sink"] == pytest.approx(2.1)
    assert p.sink_replicas == 3
    assert p.cores["sink"] == pytest.approx(2.1 + 3 * 0.01)
    # Images: 28 consumers, more than the 5 partitions 50 MB/s needs; rounded up to a multiple of the brokers.
    assert p.images_partitions == math.ceil(28 / p.brokers) * p.brokers
    assert p.predictions_partitions == math.ceil(6 / p.brokers) * p.brokers
    assert p.postgres_cores == pytest.approx(1_000 * (0.05 + 3 * 0.002) / 1000)
    assert p.total_machines == 1 + 14 + 3 + p.brokers + 1  # API, inference, sink, brokers, one database


def test_broker_bytes_follow_record_sizes_replication_and_consumer_groups() -> None:
    p = plan(1_000, read_inputs(pipeline_report(), store_report(), A), A)
    record = 50_000 + 500  # an image and its prediction
    assert p.broker_bytes_in == pytest.approx(1_000 * 3 * record)  # written once, copied to 2 followers
    assert p.broker_bytes_out == pytest.approx(
        1_000 * (2 * record + record)
    )  # to followers, then 1 group each
    stored = 1_000 * 3 * (50_000 * 3600 + 500 * 86_400)
    assert p.broker_stored_bytes == pytest.approx(stored)
    assert p.brokers_by["network"] == math.ceil(151.5e6 / 0.5e9)
    assert p.brokers_by["disk"] == math.ceil(stored / 0.5e12)
    assert p.brokers == max(p.brokers_by.values())
    by_reference = plan(1_000, read_inputs(pipeline_report(), store_report(), A), A, by_reference=True)
    assert by_reference.broker_bytes_in == pytest.approx(1_000 * 3 * (500 + 500))
    assert by_reference.brokers <= p.brokers


def test_requests_per_image_model() -> None:
    # One broker: a Produce per upload of 4; per batch of 4: fetch, AddPartitions, produce, AddOffsets,
    # TxnOffsetCommit, EndTxn, one marker; the sink fetches per 4 and commits never.
    one = requests_per_image(1, 4, 4, 4, 0.0)
    assert (one["api"], one["inference"], one["sink"]) == (0.25, 1.75, 0.25)
    many = requests_per_image(10, 4, 4, 16, 0.01)
    assert many["api"] == 1.0  # 4 images on 4 partitions led by 4 brokers
    assert many["inference"] == (5 + 4 + 5) / 4  # 4 produce requests, 5 markers
    assert many["total"] == pytest.approx(1.0 + 3.5 + 1 / 16 + 0.01)


def test_broker_cpu_scales_with_requests_or_bytes_whichever_grew_more() -> None:
    m = read_inputs(pipeline_report(), store_report(), A)
    p = plan(10_000, m, A)
    baseline = capacity.measured_requests_per_image(m, A)["total"]
    bytes_ratio = (2 * 3 * 50_500) / (2 * 50_500)  # RF 3 against the measured RF 1
    expected = 1.0 * max(p.requests["total"] / baseline, bytes_ratio)
    assert p.cpu_ms["broker"] == pytest.approx(expected)
    assert p.brokers_by["cpu"] == math.ceil(10_000 * expected / 1000)


def test_the_binding_limit_moves_from_sqlite_to_the_store_lock_to_the_feed() -> None:
    m = read_inputs(pipeline_report(), store_report(), A)
    low, mid, high = (plan(rate, m, A) for rate in (300, 5_000, 30_000))
    # SQLite: one sink on one machine at 50%: 1 core / 2 ms = 500 images/s, under SQLite's 1,500 at 50%.
    assert low.sqlite.capacity == pytest.approx(500.0)
    assert low.sqlite.use == pytest.approx(0.6) and mid.sqlite.use == pytest.approx(10.0)
    # With PostgreSQL, the nearest ceiling is the store's lock: 20,000 results/s, 10,000 planned at 50%.
    assert low.binding().name.startswith("PostgreSQL writes") and low.binding().use == pytest.approx(0.03)
    assert mid.binding().use == pytest.approx(0.5)
    store_lock = next(lim for lim in high.limits if lim.name.startswith("PostgreSQL writes"))
    assert store_lock.use == pytest.approx(3.0)
    # Every replica reads all 30,000 results/s; one listener read 40,000/s: 20,000/s planned at 50%.
    feed = next(lim for lim in high.limits if lim.name.startswith("the feed"))
    assert feed.use == pytest.approx(1.5)
    # ... and the database serves each replica's reads: writes plus replicas x reads, against 1 planned core.
    server = high.binding()
    assert server.name == "one PostgreSQL server's CPU"
    assert server.demand == pytest.approx(30_000 * (0.05 + high.sink_replicas * 0.002) / 1000)  # type: ignore[operator]
    assert server.use > store_lock.use


def test_a_feed_that_fills_a_replica_leaves_no_number_of_replicas_that_keeps_up() -> None:
    store = store_report()
    store["postgres"]["feed_read"]["client_cpu_ms_per_result"] = 0.5  # 1 core at 2,000 results/s
    m = read_inputs(pipeline_report(), store, A)
    assert plan(1_000, m, A).sink_replicas is not None
    stuck = plan(2_000, m, A)
    assert stuck.sink_replicas is None and stuck.total_machines is None
    feed = next(lim for lim in stuck.limits if lim.name.startswith("the feed"))
    assert feed.capacity == pytest.approx(2_000.0)  # a replica's 1 planned core / 0.5 ms
    assert feed.use >= 1 and stuck.binding() is feed


def test_sse_streams_by_littles_law_and_memory_per_replica() -> None:
    p = plan(1_000, read_inputs(pipeline_report(), store_report(), A), A)
    assert p.streams == pytest.approx(250 * 0.4)  # 250 uploads/s, each stream open for the p99 round trip
    assert p.long_streams == pytest.approx(250 * 30)
    assert p.stream_mb_per_replica == pytest.approx(100 / p.sink_replicas * 20 / 1024)  # type: ignore[operator]


def test_without_a_clients_section_the_page_says_so_and_with_one_it_has_a_row_per_library(
    tmp_path: Path,
) -> None:
    pipeline, store = pipeline_report(), store_report()
    (tmp_path / "pipeline.json").write_text(json.dumps(pipeline))
    (tmp_path / "store.json").write_text(json.dumps(store))
    out = tmp_path / "scaling.md"
    args = ["--pipeline", str(tmp_path / "pipeline.json"), "--store", str(tmp_path / "store.json")]
    assert capacity.main([*args, "--output", str(out)]) == 0
    page = out.read_text()
    assert "no `clients` section" in page
    assert "| 1,000 images/s | 10,000 images/s | 100,000 images/s |" in page
    assert "2026-12-01 10:00 UTC" in page and "2026-12-01 11:00 UTC" in page

    with_clients = copy.deepcopy(pipeline)
    cheaper = {**CPU, "inference_1": 5.0, "inference_2": 5.0}
    with_clients["clients"] = [
        level(100.0, 1.0, **CPU) | {"kafka_client": "kafka-python"},
        level(110.0, 1.0, **cheaper) | {"kafka_client": "confluent-kafka"},
    ]
    (tmp_path / "pipeline.json").write_text(json.dumps(with_clients))
    assert capacity.main([*args, "--output", str(out)]) == 0
    page = out.read_text()
    assert "no `clients` section" not in page
    assert "| kafka-python | 1.00 | 14.00 |" in page and "| confluent-kafka | 1.00 | 10.00 |" in page


def test_missing_inputs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--pipeline", str(tmp_path / "nope.json"), "--output", str(tmp_path / "x.md")]) == 1
    assert "make bench" in capsys.readouterr().err
