"""The compose deployment as it runs: hardened healthy containers, consumers killed under load with nothing lost,
and a scaled-up consumer group that rebalances. One deployment (tests/conftest.py) serves the module; each test
leaves it as it found it (two healthy consumers)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest
from support import lost_and_duplicated, predictions_on_topic, stream_results, upload_patiently

from docker_local.deploy import Deployment
from docker_local.engine import docker_cli
from pipeline_core.clients import create_admin

# The first test builds the images on a fresh machine (minutes); the kill tests wait out a rebalance.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _service(container: dict[str, Any]) -> str:
    service: str = container["Config"]["Labels"]["com.docker.compose.service"]
    return service


def _wait_until_healthy(deployment: Deployment, service: str, count: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [
            c["State"].get("Health", {}).get("Status", c["State"]["Status"])
            for c in deployment.containers(service)
        ]
        if states.count("healthy") == count:
            return
        time.sleep(1)
    raise AssertionError(f"{service}: {states}, not {count} healthy, after {timeout_s:.0f} s")


def _upload_load(
    deployment: Deployment, photo: bytes, requests: int, per_request: int = 4
) -> list[dict[str, str]]:
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        return [
            job
            for n in range(requests)
            for job in upload_patiently(client, {f"load-{n}-{k}.jpg": photo for k in range(per_request)})
        ]


def _wait_for_a_result(jobs: list[dict[str, str]], timeout_s: float = 60) -> None:
    """Return once the first job is done: the consumers are busy with the rest."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(jobs[0]["result_url"], timeout=5).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("no result within a minute")


def _group_partitions(deployment: Deployment) -> list[set[int]]:
    settings = deployment.pipeline_settings()
    admin = create_admin(settings, "tests")
    try:
        group = admin.describe_groups([settings.consumer_group_inference])[settings.consumer_group_inference]
    finally:
        admin.close()
    return [
        {p for t in m["member_assignment"]["assigned_partitions"] for p in t["partitions"]}
        for m in group["members"]
    ]


def _assert_all_done_once(deployment: Deployment, jobs: list[dict[str, str]], expected_label: str) -> None:
    ids = {job["id"] for job in jobs}
    results = dict(stream_results(deployment.sink_url, sorted(ids), timeout_s=300))
    bodies = {str(body["id"]): body for body in results.values()}
    assert set(bodies) == ids, f"{len(ids - set(bodies))} of {len(ids)} accepted images got no result"
    assert {body["status"] for body in bodies.values()} == {"done"}
    assert {body["label"] for body in bodies.values()} == {expected_label}
    counts = predictions_on_topic(deployment.pipeline_settings(), ids)
    assert lost_and_duplicated(counts, ids) == (0, 0), "on the predictions topic: (lost, duplicated)"


def test_every_container_is_healthy_hardened_and_only_on_the_project_network(
    compose_deployment: Deployment,
) -> None:
    containers = compose_deployment.containers()
    assert sorted(map(_service, containers)) == ["api", "inference", "inference", "kafka", "sink"]
    network = f"{compose_deployment.project}_default"
    for c in containers:
        name, host = c["Name"], c["HostConfig"]
        assert c["State"]["Health"]["Status"] == "healthy", name
        assert host["ReadonlyRootfs"] is True, name
        assert host["CapDrop"] == ["ALL"], name
        assert "no-new-privileges:true" in host["SecurityOpt"], name
        assert host["Memory"] > 0 and host["PidsLimit"] > 0, name
        assert c["Config"]["User"].split(":")[0] not in ("", "0", "root"), name
        assert set(c["NetworkSettings"]["Networks"]) == {network}, name
        for bindings in (c["NetworkSettings"]["Ports"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings or []), (name, bindings)
    published = {
        _service(c): {
            b["HostPort"] for bs in (c["NetworkSettings"]["Ports"] or {}).values() for b in bs or []
        }
        for c in containers
    }
    assert published["api"] == {str(compose_deployment.api_port)}
    assert published["sink"] == {str(compose_deployment.sink_port)}
    assert published["kafka"] == {str(compose_deployment.kafka_port)}
    assert published["inference"] == set(), "consumers publish no port, so they scale"
    page = httpx.get(compose_deployment.api_url + "/", timeout=10)
    assert page.status_code == 200 and "<form" in page.text


def test_a_consumer_that_crashes_under_load_is_restarted_and_no_image_is_lost_or_answered_twice(
    compose_deployment: Deployment, photos: dict[str, bytes]
) -> None:
    victim = compose_deployment.containers("inference")[0]
    restarts = victim["RestartCount"]
    jobs = _upload_load(compose_deployment, photos["coffee"], requests=20)
    _wait_for_a_result(jobs)
    # SIGKILL from outside, as the kernel's OOM killer or a crash ends it: the restart policy applies.
    os.kill(victim["State"]["Pid"], signal.SIGKILL)
    _assert_all_done_once(compose_deployment, jobs, "espresso")
    _wait_until_healthy(compose_deployment, "inference", 2)
    after = next(c for c in compose_deployment.containers("inference") if c["Id"] == victim["Id"])
    assert after["RestartCount"] == restarts + 1, "compose's restart policy restarted the crashed consumer"


def test_docker_kill_of_a_consumer_under_load_loses_nothing_and_compose_up_brings_it_back(
    compose_deployment: Deployment, photos: dict[str, bytes]
) -> None:
    victim = compose_deployment.containers("inference")[-1]
    jobs = _upload_load(compose_deployment, photos["coffee"], requests=20)
    _wait_for_a_result(jobs)
    subprocess.run([docker_cli(), "kill", victim["Id"]], capture_output=True, timeout=60, check=True)
    _assert_all_done_once(compose_deployment, jobs, "espresso")
    # Docker counts `docker kill` as a stop by hand, which no restart policy undoes: `compose up` does.
    compose_deployment.scale_inference(2)
    _wait_until_healthy(compose_deployment, "inference", 2)
    running = {c["Id"] for c in compose_deployment.containers("inference") if c["State"]["Running"]}
    assert victim["Id"] in running, "compose up started the killed consumer again"


def test_scaling_to_three_consumers_rebalances_the_partitions_and_each_image_is_answered_once(
    compose_deployment: Deployment, photos: dict[str, bytes]
) -> None:
    compose_deployment.scale_inference(3)
    try:
        _wait_until_healthy(compose_deployment, "inference", 3)
        deadline = time.monotonic() + 90
        members = _group_partitions(compose_deployment)
        while (len(members) != 3 or not all(members)) and time.monotonic() < deadline:
            time.sleep(1)
            members = _group_partitions(compose_deployment)
        assert len(members) == 3 and all(members), members
        assert sum(map(len, members)) == 6 and set().union(*members) == set(range(6)), members
        jobs = _upload_load(compose_deployment, photos["chelsea"], requests=6)
        ids = {job["id"] for job in jobs}
        counts = predictions_on_topic(compose_deployment.pipeline_settings(), ids)
        assert lost_and_duplicated(counts, ids) == (0, 0)
    finally:
        compose_deployment.scale_inference(2)
    _wait_until_healthy(compose_deployment, "inference", 2)


def test_a_shadow_and_a_canary_of_the_candidate_run_in_compose(
    compose_deployment: Deployment, photos: dict[str, bytes]
) -> None:
    """`COMPOSE_PROFILES=shadow` / `canary` with SHADOW_MODEL_NAME: the candidate, converted at its first start
    on its volume, answers every image beside the primary (shadow), then the images of the partitions it holds as
    a member of the primary's group (canary); each image once on the predictions topic."""
    candidate = "efficientnet-lite1"
    deployment = compose_deployment
    deployment.start_profile("shadow", SHADOW_MODEL_NAME=candidate)
    try:
        _wait_until_healthy(deployment, "shadow", 1, timeout_s=300)
        jobs = _upload_load(deployment, photos["coffee"], requests=1)
        deadline = time.monotonic() + 300  # a new shadow group starts at the topic's beginning
        results: dict[str, Any] = {}
        with httpx.Client(base_url=deployment.sink_url, timeout=10) as client:
            while len(results) < len(jobs) and time.monotonic() < deadline:
                for job in jobs:
                    body = client.get(f"/v1/results/{job['id']}").json()
                    if body.get("shadow"):
                        results[job["id"]] = body
                time.sleep(1)
            report = client.get("/v1/models").json()
        assert len(results) == len(jobs), "the shadow answered every image"
        for body in results.values():
            assert (
                body["model"]["name"] == "efficientnet-lite0" and body["shadow"]["model"]["name"] == candidate
            )
        assert {m["role"] for m in report["models"]} == {"primary", "shadow"}, report
    finally:
        deployment.stop_profile("shadow")

    deployment.start_profile("canary", SHADOW_MODEL_NAME=candidate)
    try:
        _wait_until_healthy(deployment, "canary", 1, timeout_s=300)
        deadline = time.monotonic() + 90
        while (len(members := _group_partitions(deployment)) != 3 or not all(members)) and (
            time.monotonic() < deadline
        ):
            time.sleep(1)
        assert len(members) == 3 and all(members), members
        jobs = _upload_load(deployment, photos["coffee"], requests=3)
        ids = {job["id"] for job in jobs}
        streamed = {
            str(r["id"]): r for _e, r in stream_results(deployment.sink_url, sorted(ids), timeout_s=300)
        }
        assert set(streamed) == ids
        models = {r["model"]["name"] for r in streamed.values()}  # type: ignore[index]
        assert models == {"efficientnet-lite0", candidate}, (
            "the canary answered its share, the primary the rest"
        )
        counts = predictions_on_topic(deployment.pipeline_settings(), ids)
        assert lost_and_duplicated(counts, ids) == (0, 0)
    finally:
        deployment.stop_profile("canary")
    _wait_until_healthy(deployment, "inference", 2)
