"""Every service's Prometheus `/metrics`, scraped during a real run: the values follow what happened."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support import upload, wait_by_polling

from launcher.system import System
from pipeline_core.jobs import new_job_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONSUMERS = 2


def scrape(client: httpx.Client, url: str) -> list[Sample]:
    """Every sample one `/metrics` endpoint exposes now."""
    response = client.get(url)
    assert response.status_code == 200, (url, response.text)
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def consumer_urls(system: System) -> dict[str, str]:
    return {name: url for name, url in system.metrics_urls.items() if name.startswith("inference-")}


def eventually(check: Callable[[], bool], timeout_s: float = 15) -> bool:
    """Whether `check()` becomes true within the timeout (metrics that settle a moment after the results)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def system(system_factory: Callable[..., System]) -> System:
    """A system of its own, so the counters start at zero and count only this module's uploads."""
    return system_factory(consumers=CONSUMERS)


@pytest.fixture(scope="module")
def scraper() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def classified(system: System, photos: dict[str, bytes]) -> int:
    """Upload four photos in two requests and one non-image; wait for the four results; return 4."""
    with httpx.Client(base_url=system.api_url, timeout=30) as client:
        jobs = upload(client, {"chelsea.jpg": photos["chelsea"], "coffee.jpg": photos["coffee"]})
        jobs += upload(client, {"china.jpg": photos["china"], "flower.jpg": photos["flower"]})
        bad = client.post("/v1/images", files=[("file", ("bad.jpg", b"not an image"))])
        assert bad.status_code == 400, bad.text
        for job in jobs:
            assert wait_by_polling(client, job["result_url"])["status"] == "done"
    return len(jobs)


def test_every_service_serves_metrics_at_the_recorded_urls(system: System, scraper: httpx.Client) -> None:
    assert set(system.metrics_urls) == {"api", "sink", *(f"inference-{n}" for n in range(1, CONSUMERS + 1))}
    ports = {url.rsplit(":", 1)[1] for url in consumer_urls(system).values()}
    assert len(ports) == CONSUMERS, "each consumer has a port of its own"
    for url in system.metrics_urls.values():
        assert scrape(scraper, url), url


def test_api_counts_uploads_rejections_and_sizes(
    system: System, classified: int, scraper: httpx.Client
) -> None:
    api = scrape(scraper, system.metrics_urls["api"])
    assert value(api, "api_uploads_total") >= classified
    assert value(api, "api_uploads_rejected_total", reason="not_an_image") >= 1
    assert value(api, "api_upload_bytes_count") >= classified
    assert value(api, "api_upload_bytes_sum") > 0


def test_consumers_count_images_batches_and_model_time(
    system: System, classified: int, scraper: httpx.Client
) -> None:
    per_consumer = [scrape(scraper, url) for url in consumer_urls(system).values()]
    assert sum(value(m, "inference_images_total", status="done") for m in per_consumer) == classified
    assert sum(value(m, "inference_batch_size_count") for m in per_consumer) >= 1
    assert sum(value(m, "inference_batch_size_sum") for m in per_consumer) == classified
    assert sum(value(m, "inference_batch_seconds_count") for m in per_consumer) >= 1


def test_consumer_lag_is_zero_on_every_partition_once_all_is_classified(
    system: System, classified: int, scraper: httpx.Client
) -> None:
    partitions = system.settings().topic_partitions

    def lag_by_consumer() -> list[dict[str, float]]:
        return [
            {
                s.labels["partition"]: s.value
                for s in scrape(scraper, url)
                if s.name == "inference_consumer_lag"
            }
            for url in consumer_urls(system).values()
        ]

    def settled() -> bool:
        lags = lag_by_consumer()
        covered = [p for lag in lags for p in lag]
        return sorted(covered) == sorted(map(str, range(partitions))) and not any(
            v for lag in lags for v in lag.values()
        )

    assert eventually(settled), f"each partition once, all at 0: {lag_by_consumer()}"


def test_sink_counts_results_and_their_age(system: System, classified: int, scraper: httpx.Client) -> None:
    sink = scrape(scraper, system.metrics_urls["sink"])
    assert value(sink, "results_written_total", status="done") >= classified
    assert value(sink, "sink_result_age_seconds_count") >= classified
    age_sum = value(sink, "sink_result_age_seconds_sum")
    assert 0 < age_sum < 300 * classified, "an upload-to-stored time, in seconds"
    assert any(s.name == "sse_clients" for s in sink)


def test_sink_gauge_counts_a_live_sse_stream(system: System, scraper: httpx.Client) -> None:
    sink_metrics = system.metrics_urls["sink"]
    before = value(scrape(scraper, sink_metrics), "sse_clients")
    # An id the API could have issued but whose image never came: its stream stays open until closed.
    waiting = new_job_id(system.service_env()["JOB_ID_SECRET"].encode())
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "GET", f"{system.sink_url}/v1/events?ids={waiting}") as source,
    ):
        assert source.response.status_code == 200
        assert eventually(lambda: value(scrape(scraper, sink_metrics), "sse_clients") == before + 1)
    assert eventually(lambda: value(scrape(scraper, sink_metrics), "sse_clients") == before), (
        "the gauge drops when the client goes"
    )
