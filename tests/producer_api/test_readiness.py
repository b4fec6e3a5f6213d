"""Health and readiness: with the broker, and with no broker at all (the app starts degraded, not ready)."""

from __future__ import annotations

import time

import pytest
from api_helpers import AppClient, make_image

from producer_api.app import create_app
from producer_api.settings import ApiSettings

pytestmark = pytest.mark.timeout(60)


def test_ready_with_the_broker(client: AppClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "reason": "ok"}
    assert client.get("/metrics").status_code == 200


def test_no_broker_starts_degraded_and_answers_503_at_once(api_settings_factory, unused_port: int) -> None:  # type: ignore[no-untyped-def]
    settings: ApiSettings = api_settings_factory(
        kafka_bootstrap_servers=f"127.0.0.1:{unused_port}", broker_startup_wait_s=0.2
    )
    started = time.monotonic()
    with AppClient(create_app(settings)) as client:
        assert time.monotonic() - started < 5, "start-up waits only broker_startup_wait_s"
        assert client.get("/healthz").status_code == 200

        t0 = time.monotonic()
        ready = client.get("/readyz")
        upload = client.post("/v1/images", files={"file": ("a.png", make_image())})
        predict = client.post("/predict", files={"file": ("a.png", make_image())})
        feedback = client.post("/feedback", data={"report": "wrong"})
        assert time.monotonic() - t0 < 5, "no hang while the broker is down"

    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert "no broker listening" in ready.json()["reason"]
    assert upload.status_code == 503
    assert upload.headers["Retry-After"] == "5"
    assert upload.json()["error"] == "broker_unavailable"
    assert predict.status_code == 503
    assert predict.json() == {"success": False, "prediction": None, "score": None}
    assert feedback.status_code == 503
    assert time.monotonic() - started < 10, "shutdown does not wait for a broker either"


def test_a_bad_file_is_still_refused_with_its_reason_while_the_broker_is_down(
    api_settings_factory,
    unused_port: int,  # type: ignore[no-untyped-def]
) -> None:
    settings = api_settings_factory(
        kafka_bootstrap_servers=f"127.0.0.1:{unused_port}", broker_startup_wait_s=0
    )
    with AppClient(create_app(settings)) as client:
        response = client.post("/v1/images", files={"file": ("a.png", b"nope")})
    assert response.status_code == 400
    assert response.json()["error"] == "not_an_image"
