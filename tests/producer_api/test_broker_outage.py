"""The broker goes away after start-up and comes back: uploads get 503 quickly, then work again."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_helpers import AppClient, make_image

from producer_api.app import create_app
from producer_api.settings import ApiSettings

pytestmark = [
    pytest.mark.timeout(120),
    # kafka-python 3.0.12 leaves a socket unclosed per failed reconnect while the broker is down (not ours).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def upload(client: AppClient) -> tuple[int, float]:
    started = time.monotonic()
    response = client.post("/v1/images", files={"file": ("a.png", make_image())})
    return response.status_code, time.monotonic() - started


@pytest.fixture
def collect_leaked_sockets(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Collect kafka-python's leaked sockets while this module's warning filter still applies.

    They sit in reference cycles through exception tracebacks, which captured log records of kafka-python's
    connection errors would keep alive past the test; so those records are not made, and the cycles are
    collected in teardown.
    """
    caplog.set_level(logging.CRITICAL, logger="kafka")
    yield
    gc.collect()


@pytest.mark.usefixtures("collect_leaked_sockets")
def test_uploads_get_503_while_the_broker_is_down_and_recover(
    local_broker_factory: Callable[[], Any], api_settings_factory: Callable[..., ApiSettings]
) -> None:
    broker = local_broker_factory().start()
    try:
        settings = api_settings_factory(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            publish_timeout_s=3.0,
            ready_cache_s=0.2,
        )
        with AppClient(create_app(settings)) as client:
            assert upload(client)[0] == 202
            broker.stop()

            status, took = upload(client)
            assert status == 503
            assert took < settings.publish_timeout_s + 2, "bounded by the publish timeout"
            status, took = upload(client)
            assert status == 503
            assert took < 1, "known down: refused at once"
            assert client.get("/readyz").status_code == 503

            broker.start()
            back = time.monotonic()
            while client.get("/readyz").status_code != 200 and time.monotonic() < back + 30:
                time.sleep(0.2)
            # Clients retry a 503 after Retry-After; within seconds of the broker's return, uploads succeed.
            while (status := upload(client)[0]) != 202 and time.monotonic() < back + 30:
                time.sleep(0.5)
            assert status == 202, (
                f"uploads still refused {time.monotonic() - back:.0f} s after the broker returned"
            )
    finally:
        broker.stop()
