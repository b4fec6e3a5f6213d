"""Load shedding: past the backlog limit uploads get 429 with Retry-After; below it they are accepted."""

from __future__ import annotations

import time

import pytest
from api_helpers import AppClient, make_image

from producer_api.app import create_app
from producer_api.settings import ApiSettings

pytestmark = pytest.mark.timeout(60)


def files(n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"img-{k}.png", make_image("PNG"), "image/png")) for k in range(n)]


def test_uploads_past_the_backlog_limit_get_429_with_retry_after(api_settings_factory) -> None:  # type: ignore[no-untyped-def]
    # No consumer runs in this test, so every accepted image stays in the backlog.
    settings: ApiSettings = api_settings_factory(max_backlog_images=4, backlog_check_interval_s=0.05)
    with AppClient(create_app(settings)) as client:
        assert client.post("/v1/images", files=files(4)).status_code == 202
        deadline = time.monotonic() + 10
        while (response := client.post("/v1/images", files=files(2))).status_code == 202:
            assert time.monotonic() < deadline, "the backlog was never measured"
            time.sleep(0.05)
        assert response.status_code == 429, response.text
        assert response.json()["error"] == "overloaded"
        assert int(response.headers["Retry-After"]) >= 1
        predicted = client.post("/predict", files={"file": ("a.png", make_image("PNG"), "image/png")})
        assert predicted.status_code == 429
        assert predicted.json() == {"success": False, "prediction": None, "score": None}
        assert int(predicted.headers["Retry-After"]) >= 1
        assert client.get("/readyz").status_code == 200, "an overloaded API is still ready"


def test_shedding_off_accepts_everything(api_settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings: ApiSettings = api_settings_factory(max_backlog_images=0, max_queue_wait_s=0)
    with AppClient(create_app(settings)) as client:
        for _ in range(5):
            assert client.post("/v1/images", files=files(4)).status_code == 202
