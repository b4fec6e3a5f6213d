"""What the end-to-end and fault tests do as a client of a running system: upload, follow, inspect the store."""

from __future__ import annotations

import functools
import json
import sqlite3
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import httpx
from httpx_sse import connect_sse
from jsonschema import Draft202012Validator

from launcher.system import System
from pipeline_core.settings import PipelineSettings


def upload(client: httpx.Client, files: dict[str, bytes]) -> list[dict[str, str]]:
    """Upload files in one request; assert the 202 and return its jobs."""
    response = client.post("/v1/images", files=[("file", (name, data)) for name, data in files.items()])
    assert response.status_code == 202, response.text
    jobs: list[dict[str, str]] = response.json()["jobs"]
    assert [job["filename"] for job in jobs] == list(files)
    return jobs


def upload_patiently(
    client: httpx.Client, files: dict[str, bytes], timeout_s: float = 120
) -> list[dict[str, str]]:
    """Upload as a well-behaved client does: on 429 or 503, wait what Retry-After says (at most 2 s) and retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.post("/v1/images", files=[("file", (name, data)) for name, data in files.items()])
        if response.status_code not in (429, 503) or time.monotonic() > deadline:
            break
        time.sleep(min(float(response.headers.get("Retry-After", "1")), 2.0))
    assert response.status_code == 202, response.text
    jobs: list[dict[str, str]] = response.json()["jobs"]
    return jobs


def wait_by_polling(client: httpx.Client, result_url: str, timeout_s: float = 90) -> dict[str, object]:
    """Poll a result URL until it is done or failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = client.get(result_url)
        except httpx.TransportError:  # the sink may be restarting in a fault test
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            body: dict[str, object] = response.json()
            return body
        assert response.status_code in (202, 503), response.text
        time.sleep(0.1)
    raise AssertionError(f"{result_url} not done within {timeout_s} s")


def stream_results(
    sink_url: str,
    ids: Iterable[str],
    last_event_id: str | None = None,
    limit: int | None = None,
    timeout_s: float = 120,
) -> list[tuple[str, dict[str, object]]]:
    """Read `/v1/events` for these jobs: (event id, result) pairs, until the stream ends or `limit` arrive."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    received: list[tuple[str, dict[str, object]]] = []
    with (
        httpx.Client(timeout=timeout_s) as client,
        connect_sse(client, "GET", f"{sink_url}/v1/events?ids={','.join(ids)}", headers=headers) as source,
    ):
        for event in source.iter_sse():
            if event.event == "result":
                received.append((event.id, json.loads(event.data)))
                if limit is not None and len(received) >= limit:
                    break
    return received


def system_settings(system: System) -> PipelineSettings:
    """Pipeline settings naming this system's broker, topics and consumer groups."""
    return system.settings()


def stored_results(system: System) -> dict[str, int]:
    """Rows per job id in the system's SQLite store, read directly (evidence independent of the HTTP API)."""
    path = system.service_env()["RESULTS_STORE_URL"].removeprefix("sqlite:///")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT job_id, COUNT(*) FROM results GROUP BY job_id").fetchall()
    finally:
        connection.close()
    return {job_id: count for job_id, count in rows}


def png_header_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


REPO = Path(__file__).resolve().parent.parent


@functools.cache
def published_schema(schema: str) -> Draft202012Validator:
    """A validator for the schema file docs/schemas/ publishes for this record type and version."""
    from pipeline_core.schemas import file_name

    document = json.loads((REPO / "docs" / "schemas" / file_name(schema)).read_text())
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def check_published_schema(value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> None:
    """A prediction record as a downstream consumer checks it: its header names the published schema, and
    its value validates against that schema's file."""
    from pipeline_core.events import PREDICTION_SCHEMA, schema_of

    assert schema_of(list(headers)) == PREDICTION_SCHEMA
    assert value is not None, "a prediction record without a value"
    errors = sorted(published_schema(PREDICTION_SCHEMA).iter_errors(json.loads(value)), key=str)
    assert not errors, f"a prediction record does not match its published schema: {errors[0].message}"


def predictions_on_topic(
    settings: PipelineSettings,
    expected: set[str],
    timeout_s: float = 240,
    settle_s: float = 2.0,
    topic: str | None = None,
) -> Counter[str]:
    """How many times each job's prediction is on the predictions topic, read as a downstream consumer reads
    it (`read_committed`, from the beginning, no group), each record checked against its published JSON Schema.
    Reads until every expected job is there and nothing new came for `settle_s` (so a late duplicate is
    counted too), or until `timeout_s`. `topic`: another predictions topic (a shadow model's)."""
    from kafka import TopicPartition

    from pipeline_core.clients import create_consumer
    from pipeline_core.events import decode_prediction

    consumer = create_consumer(settings, "tests-reader", group_id=None, isolation_level="read_committed")
    counts: Counter[str] = Counter()
    try:
        topic = topic or settings.topic_predictions
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = [r for rs in consumer.poll(timeout_ms=300).values() for r in rs]
            for r in batch:
                check_published_schema(r.value, r.headers)
                counts[decode_prediction(r.value, r.headers).job_id] += 1
            if batch:
                quiet_since = time.monotonic()
            elif expected <= set(counts) and time.monotonic() - quiet_since >= settle_s:
                break
    finally:
        consumer.close()
    return counts


def lost_and_duplicated(counts: Counter[str], expected: set[str]) -> tuple[int, int]:
    """Expected jobs with no prediction on the topic, and predictions beyond the first of a job."""
    lost = len(expected - set(counts))
    duplicated = sum(n - 1 for job, n in counts.items() if job in expected)
    return lost, duplicated


def write_raw(
    settings: PipelineSettings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    partitions: int | None = None,
) -> None:
    """Write records as any Kafka client may, including what kafka-python refuses to send (a null header value,
    neither key nor value): with librdkafka (confluent-kafka). With `partitions`, spread them over that many."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "message.max.bytes": 8_000_000, "acks": "all"}
    )
    failures: list[object] = []
    for n, (key, value, headers) in enumerate(records):
        extra = {"partition": n % partitions} if partitions else {}
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=headers,
            on_delivery=lambda e, _m: e and failures.append(e),
            **extra,
        )
    assert producer.flush(30) == 0, "every raw record delivered"
    assert not failures, failures


def record(output_dir: Path, name: str, **figures: object) -> None:
    """Add a fault test's figures to test-output/reliability.json (docs/reliability.md quotes them)."""
    path = output_dir / "reliability.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2))
