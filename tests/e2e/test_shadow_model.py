"""A shadow model on live traffic, as `SHADOW_MODEL_NAME=efficientnet-lite1 make run` starts it: a consumer group of
its own on the same images, its answers stored beside the primary's and compared, never sent to a client, and
never in the way of the primary's results."""

from __future__ import annotations

import time

import httpx
import pytest
from support import lost_and_duplicated, predictions_on_topic, stream_results, system_settings, upload

from launcher.system import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SHADOW = "efficientnet-lite1"


@pytest.fixture(scope="module")
def shadowed_system(system_factory) -> System:  # type: ignore[no-untyped-def]
    return system_factory(consumers=1, shadow_model=SHADOW)  # type: ignore[no-any-return]


def upload_photos(system: System, photos: dict[str, bytes], rounds: int) -> list[str]:
    with httpx.Client(base_url=system.api_url, timeout=60) as client:
        files = {f"{name}-{n}.jpg": data for n in range(rounds) for name, data in photos.items()}
        return [job["id"] for job in upload(client, files)]


def results_with_shadow(
    system: System, ids: list[str], timeout_s: float = 300
) -> dict[str, dict[str, object]]:
    """Each job's `GET /v1/results/{id}` once its shadow answer is in too."""
    results: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=system.sink_url, timeout=30) as client:
        while len(results) < len(ids) and time.monotonic() < deadline:
            for job in set(ids) - set(results):
                body = client.get(f"/v1/results/{job}").json()
                if body.get("shadow") is not None:
                    results[job] = body
            time.sleep(0.5)
    missing = set(ids) - set(results)
    assert not missing, f"{len(missing)} of {len(ids)} jobs have no shadow answer after {timeout_s:.0f} s"
    return results


def metric(system: System, name: str, **labels: str) -> float:
    """A sample of the sink's /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(system.metrics_urls["sink"], timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_the_shadow_answers_every_image_beside_the_primary_and_is_compared(
    shadowed_system: System, photos: dict[str, bytes], expected_labels: dict[str, set[str]]
) -> None:
    system = shadowed_system
    ids = upload_photos(system, photos, rounds=3)

    # Clients that follow SSE get the primary's answers, with no shadow in them.
    streamed = dict(stream_results(system.sink_url, ids))
    assert len(streamed) == len(ids)
    assert {r["model"]["name"] for r in streamed.values()} == {"efficientnet-lite0"}  # type: ignore[index]
    assert all(r["shadow"] is None for r in streamed.values())

    results = results_with_shadow(system, ids)
    for job, result in results.items():
        shadow = result["shadow"]
        assert result["model"]["name"] == "efficientnet-lite0", job  # type: ignore[index]
        assert shadow["model"]["name"] == SHADOW and shadow["model"]["version"], job  # type: ignore[index]
        assert shadow["status"] == "done" and len(shadow["top"]) == 5, job  # type: ignore[index]
        assert shadow["label"] == shadow["top"][0]["label"], job  # type: ignore[index]
    coffee = [r for r in results.values() if str(r["filename"]).startswith("coffee")]
    assert coffee and all(r["shadow"]["label"] in expected_labels["coffee"] for r in coffee)  # type: ignore[index]

    # On the topics downstream consumers read: each job once on the primary's, once on the shadow's.
    s = system_settings(system)
    assert lost_and_duplicated(predictions_on_topic(s, set(ids)), set(ids)) == (0, 0)
    shadow_topic = predictions_on_topic(s, set(ids), topic=s.topic_predictions_shadow)
    assert lost_and_duplicated(shadow_topic, set(ids)) == (0, 0)

    agreed = sum(r["label"] == r["shadow"]["label"] for r in results.values())  # type: ignore[index]
    report = httpx.get(f"{system.sink_url}/v1/models", timeout=10).json()
    by_role = {m["role"]: m for m in report["models"]}
    assert set(by_role) == {"primary", "shadow"}, report
    primary, candidate = by_role["primary"], by_role["shadow"]
    assert primary["model"]["name"] == "efficientnet-lite0" and candidate["model"]["name"] == SHADOW
    assert primary["images"] >= len(ids) and candidate["images"] >= len(ids)
    assert candidate["compared"] >= len(ids) and candidate["failures"] == 0
    assert candidate["compared"] == candidate["images"]
    if candidate["images"] == len(ids):  # this test's jobs alone: the agreement is theirs
        assert candidate["top1_agreement"] == pytest.approx(agreed / len(ids))
    for m in (primary, candidate):
        assert 0 < m["inference_ms"]["p50"] <= m["inference_ms"]["p99"]
        assert m["inference_ms"]["p99"] < m["round_trip_ms"]["p99"]

    compared = metric(system, "sink_model_compared_total", model=SHADOW)
    assert compared >= len(ids)
    assert metric(system, "sink_model_compared_total", model=SHADOW, outcome="agree") >= agreed
    assert metric(system, "sink_model_results_total", role="shadow", model=SHADOW, status="done") >= len(ids)


def test_a_stopped_shadow_delays_no_primary_result_and_catches_up_when_back(
    shadowed_system: System, photos: dict[str, bytes]
) -> None:
    system = shadowed_system
    shadow = system.services["shadow-1"]
    shadow.terminate()
    assert shadow.wait(30) == 0, "the shadow drains and stops"
    try:
        ids = upload_photos(system, photos, rounds=2)
        streamed = dict(stream_results(system.sink_url, ids, timeout_s=120))
        assert len(streamed) == len(ids), "every primary result, with the shadow down"
        with httpx.Client(base_url=system.sink_url, timeout=30) as client:
            assert all(client.get(f"/v1/results/{job}").json()["shadow"] is None for job in ids)
    finally:
        system.start_service("shadow-1")
    # From its group's committed offsets: the images it missed, each once.
    results_with_shadow(system, ids)
    s = system_settings(system)
    counts = predictions_on_topic(s, set(ids), topic=s.topic_predictions_shadow)
    assert lost_and_duplicated(counts, set(ids)) == (0, 0)
    system.check_alive()


def test_promotion_under_load_loses_none_answers_none_twice_and_serves_throughout(
    system_factory,  # type: ignore[no-untyped-def]
    photos: dict[str, bytes],
) -> None:
    """`make promote` (System.promote) while a client uploads steadily: every upload accepted, each job once on
    the predictions topic, the old model's answers before the switch and the candidate's after it."""
    import threading

    system: System = system_factory(consumers=2, shadow_model=SHADOW)
    statuses: list[int] = []
    ids: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=system.api_url, timeout=60) as client:
            n = 0
            while not stop.is_set():
                files = [("file", (f"{name}-{n}.jpg", photos[name])) for name in ("coffee", "chelsea")]
                response = client.post("/v1/images", files=files)
                statuses.append(response.status_code)
                if response.status_code == 202:
                    ids.extend(job["id"] for job in response.json()["jobs"])
                n += 1
                time.sleep(0.25)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(8)
        before = len(ids)
        offsets = system.promote()
        time.sleep(8)
    finally:
        stop.set()
        loader.join(60)
    assert before > 0 and len(ids) > before, "uploads were accepted before and after the promotion"
    assert set(statuses) <= {202, 429}, f"no 5xx, no other refusal: {sorted(set(statuses))}"
    assert offsets and sum(offsets.values()) > 0, offsets
    assert "shadow-1" not in system.services and system.shadow_model is None

    s = system_settings(system)
    counts = predictions_on_topic(s, set(ids))
    assert lost_and_duplicated(counts, set(ids)) == (0, 0)
    streamed = {}
    for start in range(0, len(ids), 50):  # within the sink's ids per stream
        chunk = stream_results(system.sink_url, ids[start : start + 50], timeout_s=180)
        streamed.update({str(result["id"]): result for _event_id, result in chunk})
    models = [streamed[job]["model"]["name"] for job in ids]  # type: ignore[index]
    assert set(models) == {"efficientnet-lite0", SHADOW}, "the old model answered, then the candidate"
    last_old = max(i for i, m in enumerate(models) if m == "efficientnet-lite0")
    assert all(m == SHADOW for m in models[last_old + 1 :]) and models[-1] == SHADOW
    assert all(streamed[job]["status"] == "done" for job in ids)
    system.check_alive()


def image_partitions(system: System, expected: set[str], timeout_s: float = 60) -> dict[str, int]:
    """The images partition each expected job's record is on, read from the images topic itself."""
    from kafka import TopicPartition

    from pipeline_core.clients import create_consumer
    from pipeline_core.events import decode_image

    s = system_settings(system)
    consumer = create_consumer(s, "tests-reader", group_id=None)
    found: dict[str, int] = {}
    try:
        topic = s.topic_images
        consumer.assign(
            [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        )
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while set(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                for r in records:
                    found[decode_image(r.value, r.headers).meta.job_id] = r.partition
    finally:
        consumer.close()
    assert set(found) >= expected, f"{len(expected - set(found))} jobs not on the images topic"
    return {job: found[job] for job in expected}


def partitions_held_by(system: System, service: str) -> set[int]:
    """The images partitions a member of the primary's group holds, found by its process id in its client id."""
    from pipeline_core.clients import create_admin

    s = system_settings(system)
    pid = system.services[service].process.pid  # type: ignore[union-attr]
    admin = create_admin(s, "tests")
    try:
        group = admin.describe_groups([s.consumer_group_inference])[s.consumer_group_inference]
    finally:
        admin.close()
    assert group["group_state"] == "Stable", group
    held: set[int] = set()
    for member in group["members"]:
        if member["client_id"].endswith(f"-{pid}"):
            for assigned in member["member_assignment"]["assigned_partitions"]:
                if assigned["topic"] == s.topic_images:
                    held |= set(assigned["partitions"])
    return held


def test_a_canary_answers_the_clients_of_its_partitions_and_the_primary_the_rest(
    system_factory,  # type: ignore[no-untyped-def]
    photos: dict[str, bytes],
) -> None:
    """CANARY_CONSUMERS=1 beside one primary consumer: the candidate is a member of the primary's group, so it
    answers (on the predictions topic, and to clients) exactly the images of the partitions it holds, each once."""
    system: System = system_factory(consumers=1, shadow_model=SHADOW, shadow_consumers=0, canary_consumers=1)
    assert "shadow-1" not in system.services
    canary_partitions = partitions_held_by(system, "canary-1")
    primary_partitions = partitions_held_by(system, "inference-1")
    assert canary_partitions and primary_partitions and not canary_partitions & primary_partitions
    partitions = len(canary_partitions | primary_partitions)

    ids = upload_photos(system, photos, rounds=4) + upload_photos(system, photos, rounds=4)
    streamed = {str(r["id"]): r for _event_id, r in stream_results(system.sink_url, ids, timeout_s=240)}
    assert set(streamed) == set(ids)
    where = image_partitions(system, set(ids))
    for job in ids:
        model = streamed[job]["model"]["name"]  # type: ignore[index]
        expected = SHADOW if where[job] in canary_partitions else "efficientnet-lite0"
        assert model == expected, (job, where[job], model, canary_partitions)
        assert streamed[job]["status"] == "done" and streamed[job]["shadow"] is None  # type: ignore[index]
    by_canary = sum(where[job] in canary_partitions for job in ids)
    assert 0 < by_canary < len(ids), "both models answered a share"
    assert len(canary_partitions) == partitions // 2, "one of two members: half the partitions"

    s = system_settings(system)
    assert lost_and_duplicated(predictions_on_topic(s, set(ids)), set(ids)) == (0, 0)
    report = httpx.get(f"{system.sink_url}/v1/models", timeout=10).json()
    primary_rows = {m["model"]["name"]: m for m in report["models"] if m["role"] == "primary"}
    assert set(primary_rows) == {"efficientnet-lite0", SHADOW}, report
    assert primary_rows[SHADOW]["images"] == by_canary
    system.check_alive()
