"""The whole pipeline as a user meets it: real API, real broker, two real consumers, real sink, real photos; each
test once on the system `make run` starts and once on the compose deployment `make docker-up` starts."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from httpx_sse import aconnect_sse, connect_sse
from support import (
    lost_and_duplicated,
    predictions_on_topic,
    system_settings,
    upload,
    upload_patiently,
    wait_by_polling,
)

from docker_local.deploy import Deployment
from launcher.system import System
from pipeline_core.clients import create_admin
from pipeline_core.settings import PipelineSettings

# The compose deployment's first use builds its images (minutes on a fresh machine): a long limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_several_images_in_one_request_followed_by_sse_and_by_polling(
    deployed: System | Deployment, photos: dict[str, bytes], expected_labels: dict[str, set[str]]
) -> None:
    with httpx.Client(base_url=deployed.api_url, timeout=30) as client:
        jobs = upload(client, {"chelsea.jpg": photos["chelsea"], "coffee.jpg": photos["coffee"]})
        assert all(
            job["result_url"].startswith("http") and job["events_url"].startswith("http") for job in jobs
        )
        assert len({job["id"] for job in jobs}) == 2 and all(len(job["id"]) >= 22 for job in jobs)

        chelsea, coffee = jobs
        with connect_sse(client, "GET", chelsea["events_url"]) as source:
            events = list(source.iter_sse())
        assert [e.event for e in events] == ["result"], "one result event, then the stream ends"
        result = json.loads(events[0].data)
        assert result["status"] == "done" and result["label"] in expected_labels["chelsea"]
        assert events[0].id, "events carry ids, for Last-Event-ID"

        polled = wait_by_polling(client, coffee["result_url"])
        assert polled["status"] == "done" and polled["label"] == "espresso"
        assert len(polled["top"]) == 5  # type: ignore[arg-type]
        assert polled["model"]["name"] == "efficientnet-lite0"  # type: ignore[index]


def test_concurrent_requests_all_classified_and_streamed_by_one_multi_job_stream(
    deployed: System | Deployment, photos: dict[str, bytes], expected_labels: dict[str, set[str]]
) -> None:
    async def scenario() -> tuple[list[dict[str, str]], dict[str, dict[str, object]]]:
        async with httpx.AsyncClient(base_url=deployed.api_url, timeout=30) as client:
            responses = await asyncio.gather(
                *[
                    client.post(
                        "/v1/images",
                        files=[
                            ("file", (f"chelsea-{n}.jpg", photos["chelsea"])),
                            ("file", (f"coffee-{n}.jpg", photos["coffee"])),
                        ],
                    )
                    for n in range(8)
                ]
            )
            assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
            jobs = [job for r in responses for job in r.json()["jobs"]]
            ids = ",".join(job["id"] for job in jobs)
            results: dict[str, dict[str, object]] = {}
            async with aconnect_sse(client, "GET", f"{deployed.sink_url}/v1/events?ids={ids}") as source:
                async for event in source.aiter_sse():
                    assert event.event == "result"
                    body = json.loads(event.data)
                    results[body["id"]] = body
            return jobs, results

    jobs, results = asyncio.run(scenario())
    assert len(jobs) == 16 and set(results) == {job["id"] for job in jobs}, (
        "the stream ends after the last job"
    )
    for job in jobs:
        photo = job["filename"].split("-")[0]
        assert results[job["id"]]["label"] in expected_labels[photo], (job, results[job["id"]])


def test_compatibility_routes_behave_as_the_original_project(
    deployed: System | Deployment, photos: dict[str, bytes]
) -> None:
    with httpx.Client(base_url=deployed.api_url, timeout=60) as client:
        ok = client.post("/predict", files={"file": ("coffee.jpg", photos["coffee"])})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert set(body) == {"success", "prediction", "score"}
        assert body["success"] is True and body["prediction"] == "espresso"
        assert body["score"] == round(body["score"], 4) and 0 < body["score"] <= 1

        for bad in (client.post("/predict", json={"file": "nope"}), client.post("/predict")):
            assert bad.status_code == 400
            assert bad.json() == {"success": False, "prediction": None, "score": None}
        not_an_image = client.post("/predict", files={"file": ("cat.jpg", b"definitely not a jpeg")})
        assert not_an_image.status_code == 400 and not_an_image.json()["success"] is False
        assert client.get("/predict").status_code == 405

        assert client.get("/").status_code == 200
        assert client.post("/", files={}).status_code in (302, 303)
        assert client.post("/feedback", data={"report": "coffee.jpg is a latte"}).status_code == 200
        assert client.get("/feedback").status_code == 200
        assert client.post("/feedback").status_code == 200


@pytest.fixture(params=["make-run", "compose"])
def two_consumers(request: pytest.FixtureRequest) -> tuple[str, PipelineSettings]:
    """A fresh system with two consumers (make run), or the compose deployment's default two: API URL, settings."""
    if request.param == "compose":
        deployment: Deployment = request.getfixturevalue("compose_deployment")
        assert deployment.inference_replicas == 2
        return deployment.api_url, deployment.pipeline_settings()
    system = request.getfixturevalue("system_factory")(consumers=2)
    return system.api_url, system_settings(system)


def test_two_consumers_split_the_partitions_and_each_image_is_classified_exactly_once(
    two_consumers: tuple[str, PipelineSettings], photos: dict[str, bytes]
) -> None:
    api_url, settings = two_consumers
    with httpx.Client(base_url=api_url, timeout=30) as client:
        jobs = [
            job
            for n in range(10)
            # As a well-behaved client: the compose deployment runs with admission by wait on (429 + Retry-After).
            for job in upload_patiently(client, {f"c{n}-{k}.jpg": photos["coffee"] for k in range(4)})
        ]
        for job in jobs:
            assert wait_by_polling(client, job["result_url"])["label"] == "espresso"

    # The compose deployment's group was disturbed by earlier tests (a consumer killed, the group scaled to three
    # and back): give a rebalance still under way a minute to settle; a fresh system's is settled already.
    admin = create_admin(settings, "tests")
    deadline = time.monotonic() + 60
    try:
        while True:
            group = admin.describe_groups([settings.consumer_group_inference])[
                settings.consumer_group_inference
            ]
            partitions_by_member = [
                {p for t in m["member_assignment"]["assigned_partitions"] for p in t["partitions"]}
                for m in group["members"]
            ]
            settled = group["group_state"] == "Stable" and len(partitions_by_member) == 2
            if (settled and all(partitions_by_member)) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        admin.close()
    assert len(partitions_by_member) == 2 and all(partitions_by_member), group
    assert partitions_by_member[0].isdisjoint(partitions_by_member[1])
    assert partitions_by_member[0] | partitions_by_member[1] == set(range(6))

    ids = {job["id"] for job in jobs}
    counts = predictions_on_topic(settings, ids)
    # (lost, duplicated) among this test's jobs: the compose deployment's topic also holds other tests' jobs.
    assert lost_and_duplicated(counts, ids) == (0, 0), (
        "one prediction per image on the topic: none lost, none twice"
    )
