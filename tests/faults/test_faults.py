"""Faults injected into real processes: every image that got a 202 gets its result, whatever crashes, and with
exactly-once processing its prediction is on the predictions topic exactly once.

Duplicates are counted where a downstream consumer would see them: on the predictions topic, read
`read_committed` from the beginning (`support.predictions_on_topic`), not in the sink's table, whose unique
job id cannot hold two. Each test records what it did in test-output/reliability.json (images in flight,
faults, lost, duplicated), the figures docs/reliability.md quotes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import (
    lost_and_duplicated,
    predictions_on_topic,
    record,
    stored_results,
    stream_results,
    system_settings,
    upload,
    wait_by_polling,
)

from launcher.system import System
from pipeline_core.clients import create_producer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def upload_many(system: System, photo: bytes, requests: int, per_request: int = 4) -> list[dict[str, str]]:
    with httpx.Client(base_url=system.api_url, timeout=30) as client:
        return [
            job
            for n in range(requests)
            for job in upload(client, {f"img-{n}-{k}.jpg": photo for k in range(per_request)})
        ]


def wait_all_stored(system: System, ids: set[str], timeout_s: float = 240) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = stored_results(system)
        if ids <= set(stored):
            return stored
        time.sleep(0.5)
    stored = stored_results(system)
    raise AssertionError(f"{len(ids - set(stored))} of {len(ids)} accepted images have no result")


def on_topic(system: System, ids: set[str], exactly_once: bool = True) -> tuple[int, int]:
    """Lost and duplicated predictions of these jobs on the topic; with exactly-once, both must be 0."""
    lost, duplicated = lost_and_duplicated(predictions_on_topic(system_settings(system), ids), ids)
    assert lost == 0, f"{lost} of {len(ids)} accepted images have no prediction on the topic"
    if exactly_once:
        assert duplicated == 0, f"{duplicated} predictions appear twice on the topic"
    return lost, duplicated


# Both guarantees on the default client (confluent-kafka), exactly-once on kafka-python too.
@pytest.mark.parametrize(
    ("guarantee", "client"),
    [
        ("exactly-once", "confluent-kafka"),
        ("at-least-once", "confluent-kafka"),
        ("exactly-once", "kafka-python"),
    ],
)
def test_kill_9_one_of_two_consumers_in_flight(
    system_factory: Callable[..., System],
    photos: dict[str, bytes],
    output_dir: Path,
    guarantee: str,
    client: str,
) -> None:
    # At-least-once commits at most once a minute here (the first batch may be committed at once), so that the
    # victim surely dies with finished, uncommitted work: the duplicates it then leaves on the topic show that the
    # count sees them, and so that exactly-once's 0 means something. With 2 s a kill that came just after a
    # commit left none (CI, once). (Exactly-once commits with each batch whatever COMMIT_INTERVAL_MS says.)
    # Admission counts uncommitted images as waiting, so its limit is raised for the 300 uploaded at once.
    system = system_factory(
        consumers=2,
        PROCESSING_GUARANTEE=guarantee,
        COMMIT_INTERVAL_MS="60000",
        MAX_BACKLOG_IMAGES="2000",
        KAFKA_CLIENT=client,
    )
    jobs = upload_many(system, photos["coffee"], requests=75)  # 300 images
    ids = {job["id"] for job in jobs}
    while len(stored_results(system)) < 100:  # the victim is mid-stream, with finished work behind it
        time.sleep(0.05)
    in_flight = len(ids) - len(stored_results(system))
    victim = system.services["inference-1"]
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    wait_all_stored(system, ids)
    lost, duplicated = on_topic(system, ids, exactly_once=guarantee == "exactly-once")
    if guarantee == "at-least-once":
        assert duplicated > 0, "re-delivered work reaches the topic twice, and the count sees it"
    assert system.services["inference-2"].running, "the surviving consumer took over"
    record(
        output_dir,
        f"kill -9 one of two consumers ({guarantee}, {client})",
        images=len(ids),
        in_flight_at_fault=in_flight,
        faults=1,
        lost=lost,
        duplicated=duplicated,
    )


# Known, not fixed (docs/reliability.md, "Known issue"): after the only broker is killed mid-transaction and
# restarted, a confluent-kafka exactly-once group was seen (5 of 28 runs here, each of the last 3 CI runs) to
# be refused its committed offsets for good. This variant runs and asserts everything; a failure is taken as that
# known issue only when the consumer's log shows its symptom, and fails the test otherwise.
KNOWN_OFFSETS_HANG = "and the brokers did not say whether"


def known_offsets_hang(system: System, output_dir: Path) -> bool:
    """Whether the system's inference consumer logged the known issue's symptom: unanswered stall checks, two
    in a row at least (it then reports not ready)."""
    log = (output_dir / f"{system.data_dir.name}.log").read_text(errors="replace")
    return any(KNOWN_OFFSETS_HANG in line and "not ready until they do" in line for line in log.splitlines())


@pytest.mark.parametrize(
    ("kafka_client", "guarantee"),
    [
        ("confluent-kafka", "exactly-once"),
        ("confluent-kafka", "at-least-once"),
        ("kafka-python", "exactly-once"),
    ],
)
def test_broker_stopped_while_uploading_then_restarted(
    system_factory: Callable[..., System],
    local_broker_factory: Callable[[], object],
    photos: dict[str, bytes],
    output_dir: Path,
    kafka_client: str,
    guarantee: str,
) -> None:
    broker = local_broker_factory()
    broker.start()  # type: ignore[attr-defined]
    try:
        system = system_factory(
            consumers=1,
            bootstrap=broker.bootstrap_servers,  # type: ignore[attr-defined]
            KAFKA_CLIENT=kafka_client,
            PROCESSING_GUARANTEE=guarantee,
        )
        accepted = {job["id"] for job in upload_many(system, photos["coffee"], requests=10)}
        broker.kill()  # type: ignore[attr-defined]
        with httpx.Client(base_url=system.api_url, timeout=30) as client:
            started = time.monotonic()
            refused = client.post("/v1/images", files=[("file", ("a.jpg", photos["coffee"]))])
            refusal_s = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert "Retry-After" in refused.headers
            assert refusal_s < 3, f"the API answered 503 after {refusal_s:.1f} s"
            deadline = time.monotonic() + 15
            while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get("/readyz").status_code == 503, (
                "readiness says not ready while the broker is down"
            )
        broker.start()  # type: ignore[attr-defined]
        try:
            wait_all_stored(system, accepted)
        except AssertionError:
            if (kafka_client, guarantee) == ("confluent-kafka", "exactly-once") and known_offsets_hang(
                system, output_dir
            ):
                pytest.xfail(
                    "the known issue: the group's offsets unreadable after the restart (docs/reliability.md)"
                )
            raise
        lost, duplicated = on_topic(system, accepted, exactly_once=guarantee == "exactly-once")
        with httpx.Client(base_url=system.api_url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            after = upload(client, {"after.jpg": photos["coffee"]})
            assert wait_by_polling(client, after[0]["result_url"])["label"] == "espresso"
        record(
            output_dir,
            f"broker stopped and restarted ({kafka_client}, {guarantee})",
            images=len(accepted),
            faults=1,
            seconds_to_503=round(refusal_s, 2),
            lost=lost,
            duplicated=duplicated,
        )
    finally:
        broker.stop()  # type: ignore[attr-defined]


def test_sink_killed_and_restarted_sse_client_resumes_with_last_event_id(
    system_factory: Callable[..., System], photos: dict[str, bytes], output_dir: Path
) -> None:
    system = system_factory(consumers=2)
    jobs = upload_many(system, photos["coffee"], requests=10)  # 40 images
    ids = [job["id"] for job in jobs]
    first = stream_results(system.sink_url, ids, limit=10)
    sink = system.services["sink"]
    assert sink.process is not None
    sink.process.send_signal(signal.SIGKILL)
    sink.wait(10)
    more = upload_many(system, photos["coffee"], requests=5)  # results produced while the sink is down
    system.start_service("sink")
    system.wait_ready()
    rest = stream_results(system.sink_url, ids, last_event_id=first[-1][0])
    received = [result["id"] for _, result in first + rest]
    assert sorted(received) == sorted(ids), "the reconnecting client got exactly what it missed"
    all_ids = set(ids) | {job["id"] for job in more}
    wait_all_stored(system, all_ids)
    lost, duplicated = on_topic(system, all_ids)
    record(
        output_dir,
        "sink killed and restarted",
        images=len(all_ids),
        faults=1,
        lost=lost,
        duplicated=duplicated,
        sse_events_before=len(first),
        sse_events_after_resume=len(rest),
    )


def test_foreign_and_malformed_records_on_the_images_topic(
    running_system: System, photos: dict[str, bytes], output_dir: Path
) -> None:
    settings = system_settings(running_system)
    producer = create_producer(settings, "tests")
    try:
        for partition in range(settings.topic_partitions):
            producer.send(settings.topic_images, partition=partition, key=None, value=b"\x00garbage")
        producer.send(
            settings.topic_images, key=b"not-an-issued-id", value=b"x", headers=[("schema", b"image/1")]
        )
        producer.flush(30)
    finally:
        producer.close()
    with httpx.Client(base_url=running_system.api_url, timeout=30) as client:
        # The partitions keep moving: images uploaded after the garbage are classified.
        jobs = upload(client, {f"after-{n}.jpg": photos["coffee"] for n in range(12)})
        for job in jobs:
            assert wait_by_polling(client, job["result_url"])["label"] == "espresso"
    record(
        output_dir,
        "foreign and malformed records",
        foreign_records=settings.topic_partitions + 1,
        good_images_after=len(jobs),
        lost=0,
    )


def test_sigterm_to_every_service_under_load_then_restart(
    system_factory: Callable[..., System], photos: dict[str, bytes], output_dir: Path
) -> None:
    system = system_factory(consumers=2)
    accepted = {job["id"] for job in upload_many(system, photos["coffee"], requests=50)}  # 200 images
    started = time.monotonic()
    codes = system.stop()
    stop_s = time.monotonic() - started
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the web services report -15; a service that had
    # to be killed after its stop timeout would report -9.
    assert all(code in (0, -signal.SIGTERM) for code in codes.values()), codes
    assert stop_s < 60, f"stopping took {stop_s:.1f} s"
    system.start()
    wait_all_stored(system, accepted)
    lost, duplicated = on_topic(system, accepted)
    record(
        output_dir,
        "SIGTERM to every service under load",
        images=len(accepted),
        faults=len(codes),
        stop_seconds=round(stop_s, 1),
        exit_codes=codes,
        lost=lost,
        duplicated=duplicated,
    )
