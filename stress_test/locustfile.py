"""Locust end to end: upload a photo, wait for its result by SSE, and time the whole round trip.

Headless run against `make run` (see docs/benchmarks.md):
    .venv/bin/locust -f stress_test/locustfile.py --headless -u 50 -r 5 -t 2m \
        --host http://localhost:8000 --csv stress_test/reports/run

Environment: RESULTS_URL (default http://localhost:8001), API_KEY (if the system has one),
LOCUST_FILES_PER_UPLOAD (default 1), LOCUST_WAIT_MIN / LOCUST_WAIT_MAX seconds between tasks (default 1 and 5,
as the original project's stress tests).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from locust import HttpUser, between, task
from PIL import Image

RESULTS_URL = os.environ.get("RESULTS_URL", "http://localhost:8001")
HEADERS = {"X-API-Key": os.environ["API_KEY"]} if os.environ.get("API_KEY") else {}
FILES_PER_UPLOAD = int(os.environ.get("LOCUST_FILES_PER_UPLOAD", "1"))


def _photos() -> list[tuple[str, bytes]]:
    """Real photos: the ones in stress_test/photos/ if any, else scikit-image's cat and coffee."""
    folder = Path(__file__).parent / "photos"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if files:
        return [(p.name, p.read_bytes()) for p in files]
    from skimage import data

    photos = []
    for name, array in (("chelsea.jpg", data.chelsea()), ("coffee.jpg", data.coffee())):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        photos.append((name, buffer.getvalue()))
    return photos


PHOTOS = _photos()


class PipelineUser(HttpUser):
    """A person who opens the page now and then and mostly classifies photos, waiting for each result."""

    wait_time = between(
        float(os.environ.get("LOCUST_WAIT_MIN", "1")), float(os.environ.get("LOCUST_WAIT_MAX", "5"))
    )

    def on_start(self) -> None:
        self.photo_index = 0

    @task(1)
    def page(self) -> None:
        with self.client.get("/", name="GET /", catch_response=True) as response:
            if response.status_code == 503 and response.headers.get("Retry-After"):
                response.success()  # the server's request cap, on purpose: shed, not failed
                self._fire("shed (429/503)", time.perf_counter(), None)
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")

    @task(3)
    def classify(self) -> None:
        files = []
        for _ in range(FILES_PER_UPLOAD):
            name, data = PHOTOS[self.photo_index % len(PHOTOS)]
            self.photo_index += 1
            files.append(("file", (name, data, "application/octet-stream")))
        started = time.perf_counter()
        with self.client.post(
            "/v1/images", files=files, headers=HEADERS, name="POST /v1/images", catch_response=True
        ) as response:
            if response.status_code in (429, 503) and response.headers.get("Retry-After"):
                response.success()  # load shed on purpose, with Retry-After: counted below, not a failure
                self._fire("shed (429/503)", started, None)
                return
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            ids = [job["id"] for job in response.json()["jobs"]]
        self._wait_for_results(ids, started)

    def _wait_for_results(self, ids: list[str], started: float) -> None:
        url = f"{RESULTS_URL}/v1/events?ids={','.join(ids)}"
        pending = set(ids)
        error = None
        try:
            with self.client.get(
                url, headers=HEADERS, stream=True, name="SSE /v1/events", timeout=120, catch_response=True
            ) as stream:
                event = None
                for line in stream.iter_lines(decode_unicode=True):
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:") and event == "result":
                        result = json.loads(line.partition(":")[2])
                        pending.discard(result["id"])
                        if result["status"] != "done":
                            error = RuntimeError(f"job {result['id']} failed: {result.get('error')}")
                if pending:
                    error = RuntimeError(f"{len(pending)} results missing when the stream ended")
                    stream.failure(str(error))
                else:
                    stream.success()
        except Exception as e:
            error = e
        self._fire("round trip (upload to SSE result)", started, error)

    def _fire(self, name: str, started: float, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="E2E",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
