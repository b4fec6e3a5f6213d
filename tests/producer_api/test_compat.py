"""The original project's routes: /predict, /, /feedback.

/predict's success path needs a result from the sink; the real pipeline is tested end to end in tests/e2e.
Here a FAKE SINK (a tiny uvicorn server speaking the sink's SSE protocol) answers instead, while the image is
really published to the real broker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from api_helpers import AppClient, TopicReader, closed_port, make_image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pipeline_core.events import decode_feedback, decode_image
from producer_api.app import create_app
from producer_api.settings import ApiSettings

pytestmark = pytest.mark.timeout(60)
KEY = "tests-api-key-0123456789"  # API_KEY takes 16 characters or more
THREE_KEYS_FAILED = {"success": False, "prediction": None, "score": None}


class FakeSink:
    """Serves `GET /v1/results/{id}/events` like the results sink: one `result` event, per `self.mode`."""

    def __init__(self) -> None:
        self.mode = "done"
        self.requests: list[tuple[str, str | None]] = []
        self.port = closed_port()
        app = Starlette(routes=[Route("/v1/results/{job_id}/events", self.events)])
        self.server = uvicorn.Server(
            uvicorn.Config(app, port=self.port, log_level="warning", timeout_graceful_shutdown=1)
        )

    async def events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        self.requests.append((job_id, request.headers.get("x-api-key")))
        return StreamingResponse(self._stream(job_id), media_type="text/event-stream")

    async def _stream(self, job_id: str) -> AsyncIterator[str]:
        yield ": waiting\n\n"
        if self.mode == "silent":
            for _ in range(30):
                await asyncio.sleep(0.1)
                yield ": ping\n\n"
            return
        result: dict[str, Any] = {"id": job_id, "status": self.mode, "filename": "x"}
        if self.mode == "done":
            result |= {"label": "tabby", "score": 0.8765432, "top": [{"label": "tabby", "score": 0.8765432}]}
        else:
            result |= {"error": "undecodable image"}
        yield f"event: result\nid: 1\ndata: {json.dumps(result)}\n\n"

    def __enter__(self) -> FakeSink:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def fake_sink() -> Iterator[FakeSink]:
    """A fake results sink on a free port (see the module docstring)."""
    with FakeSink() as sink:
        yield sink


@pytest.fixture
def sink_client(api_settings_factory, fake_sink: FakeSink) -> Iterator[AppClient]:  # type: ignore[no-untyped-def]
    """The app, with /predict waiting on the fake sink."""
    settings: ApiSettings = api_settings_factory(
        results_internal_url=f"http://127.0.0.1:{fake_sink.port}", predict_timeout_s=1.5, api_key=KEY
    )
    with AppClient(create_app(settings)) as client:
        client.http.headers["X-API-Key"] = KEY
        yield client


def test_predict_publishes_and_answers_the_label_and_score(
    sink_client: AppClient,
    fake_sink: FakeSink,
    reader: TopicReader,
    api_settings: ApiSettings,
    photos: dict[str, bytes],
) -> None:
    response = sink_client.post("/predict", files={"file": ("chelsea.jpg", photos["chelsea"])})

    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "prediction": "tabby", "score": 0.8765}
    (record,) = reader.read(api_settings.topic_images, 1)
    event = decode_image(record.value, record.headers)
    assert fake_sink.requests == [(event.meta.job_id, KEY)], (
        "waited on the job it published, with the API key"
    )
    assert event.image == photos["chelsea"]


def test_predict_a_failed_result_is_400(sink_client: AppClient, fake_sink: FakeSink) -> None:
    fake_sink.mode = "failed"
    response = sink_client.post("/predict", files={"file": ("a.png", make_image())})
    assert response.status_code == 400
    assert response.json() == THREE_KEYS_FAILED


def test_predict_no_result_in_time_is_504(sink_client: AppClient, fake_sink: FakeSink) -> None:
    fake_sink.mode = "silent"
    started = time.monotonic()
    response = sink_client.post("/predict", files={"file": ("a.png", make_image())})
    assert response.status_code == 504
    assert response.json() == THREE_KEYS_FAILED
    assert time.monotonic() - started < 5


def test_post_page_with_a_photo_shows_the_result(sink_client: AppClient) -> None:
    response = sink_client.post("/", files={"file": ("<img src=x onerror=alert(1)>.png", make_image())})
    assert response.status_code == 200
    assert 'is <strong class="label">tabby</strong> (score 0.8765)' in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in response.text, "the file name is HTML-escaped"


@pytest.mark.parametrize(
    "body", [{}, {"json": {"file": "nope"}}, {"files": {"other": ("a.png", make_image())}}]
)
def test_predict_with_no_file_is_400_with_the_three_keys(client: AppClient, body: dict[str, Any]) -> None:
    response = client.post("/predict", **body)
    assert response.status_code == 400
    assert response.json() == THREE_KEYS_FAILED


def test_predict_with_a_bad_image_is_400_and_nothing_is_published(
    client: AppClient, reader: TopicReader, api_settings: ApiSettings
) -> None:
    response = client.post("/predict", files={"file": ("cat.jpg", b"definitely not a jpeg")})
    assert response.status_code == 400
    assert response.json() == THREE_KEYS_FAILED
    assert reader.count(api_settings.topic_images) == 0


def test_get_predict_is_405(client: AppClient) -> None:
    assert client.get("/predict").status_code == 405


def test_the_page_is_served_with_its_assets(client: AppClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="upload-form"' in page.text
    assert "<!--server-result-->" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


@pytest.mark.parametrize("body", [{}, {"files": {"file": ("", b"")}}])
def test_post_page_with_no_file_redirects_to_the_page(client: AppClient, body: dict[str, Any]) -> None:
    response = client.post("/", **body)
    assert response.status_code == 302
    assert response.headers["location"] == "/"


def test_feedback_publishes_a_feedback_event(
    client: AppClient, reader: TopicReader, api_settings: ApiSettings
) -> None:
    uploaded = client.post("/v1/images", files={"file": ("a.png", make_image())}).json()["jobs"][0]
    response = client.post("/feedback", data={"report": "a.png is a teal square", "job_id": uploaded["id"]})

    assert response.status_code == 200
    assert response.json() == {"success": True}
    (record,) = reader.read(api_settings.topic_feedback, 1)
    event = decode_feedback(record.value, record.headers)
    assert event.report == "a.png is a teal square"
    assert event.job_id == uploaded["id"]


def test_feedback_get_and_empty_post_are_200_and_publish_nothing(
    client: AppClient, reader: TopicReader, api_settings: ApiSettings
) -> None:
    assert client.get("/feedback").status_code == 200
    assert client.post("/feedback").status_code == 200
    assert client.post("/feedback", data={"report": "   "}).status_code == 200
    assert client.post("/feedback", data={"report": "x", "job_id": "made-up"}).status_code == 400
    assert reader.count(api_settings.topic_feedback) == 0
