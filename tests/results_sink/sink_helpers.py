"""Helpers of the sink tests: a realistic prediction, and the sink served by uvicorn in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from kafka_local import free_port
from pipeline_core.events import PredictionEvent, ScoredLabelModel, Timings
from pipeline_core.serving import serve
from results_sink.app import create_app
from results_sink.settings import SinkSettings

SECRET = "tests-job-id-secret"


def prediction(job_id: str, status: str = "done", label: str = "tabby") -> PredictionEvent:
    """A realistic prediction event for `job_id`."""
    now = time.time()
    if status == "failed":
        return PredictionEvent(job_id=job_id, status="failed", filename="broken.jpg", error="not an image")
    return PredictionEvent(
        job_id=job_id,
        status="done",
        filename="cat.jpg",
        label=label,
        score=0.87,
        top=(
            ScoredLabelModel(label=label, wnid="n02123045", index=281, score=0.87),
            ScoredLabelModel(label="tiger_cat", wnid="n02123159", index=282, score=0.08),
        ),
        model_name="efficientnet-lite0",
        model_version="1",
        runtime="litert",
        timings=Timings(
            received_at=now - 0.2,
            dequeued_at=now - 0.1,
            predicted_at=now - 0.05,
            preprocess_ms=3.0,
            inference_ms=12.5,
            batch_size=1,
        ),
    )


class SinkServer:
    """The sink app served by uvicorn on a free port, in a thread of the test process."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.app: FastAPI = create_app(settings)
        self.port = free_port()
        # The services' own server set-up (timeouts, connection and request caps), as in production.
        self.server = serve(self.app, settings, "127.0.0.1", self.port, 2)
        self.thread = threading.Thread(target=self.server.run, name="sink-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sink did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the sink did not stop"

    def wait_until(self, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Poll `condition` until it holds; fail the test after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.02)

    def wait_ready(self) -> None:
        with httpx.Client(base_url=self.url) as client:
            self.wait_until(lambda: client.get("/readyz").status_code == 200)

    @property
    def subscribers(self) -> int:
        return int(self.app.state.hub.subscriber_count)
