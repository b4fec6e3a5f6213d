"""A fake of the system's HTTP contract for the CLI's logic tests: the upload API and the results service."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx

API = "http://api.test"
RESULTS = "http://results.test"


class Sleeps(list[float]):
    """A fake `asyncio.sleep` that records how long it was asked to wait."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def result_body(job_id: str, filename: str) -> dict[str, Any]:
    """What the results service answers for a finished job; files named `fail*` fail in the classifier."""
    if filename.startswith("fail"):
        return {
            "id": job_id,
            "status": "failed",
            "filename": filename,
            "label": None,
            "score": None,
            "top": [],
            "error": "image could not be decoded",
        }
    top = [
        {"label": "tabby", "wnid": "n02123045", "index": 281, "score": 0.75},
        {"label": "tiger_cat", "wnid": "n02123159", "index": 282, "score": 0.2},
    ]
    return {
        "id": job_id,
        "status": "done",
        "filename": filename,
        "label": "tabby",
        "score": 0.75,
        "top": top,
        "error": None,
        "model": {"name": "fake", "version": "1", "runtime": "none"},
        "timings": {},
    }


def sse(events: Iterable[tuple[str, str, dict[str, Any]]]) -> bytes:
    """An SSE body: (event name, id, data) triples, with a keep-alive comment first."""
    frames = (f"event: {name}\nid: {eid}\ndata: {json.dumps(data)}\n\n" for name, eid, data in events)
    return (": ping\n\n" + "".join(frames)).encode()


class DroppingStream(httpx.AsyncByteStream):
    """A response body that sends its chunks, then loses the connection."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset by peer")


class FakeSystem:
    """Upload API + results service behind one MockTransport handler, recording every request.

    Files named `bad*` are refused (400, naming the file); `slow*` never finish; `fail*` fail to classify.
    """

    def __init__(self, max_files: int = 16, api_key: str | None = None) -> None:
        self.max_files = max_files
        self.api_key = api_key
        self.requests: list[httpx.Request] = []
        self.jobs: dict[str, str] = {}
        self.seq: dict[str, int] = {}

    @property
    def transport(self) -> httpx.MockTransport:
        """The transport to give the client."""
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Route one request."""
        self.requests.append(request)
        if self.api_key and request.headers.get("X-API-Key") != self.api_key:
            return httpx.Response(401, json={"error": "missing or wrong X-API-Key header"})
        path = request.url.path
        if request.method == "POST" and path == "/v1/images":
            return self.upload(request)
        if path == "/v1/events":
            return self.events(request.url.params["ids"].split(","))
        if path.startswith("/v1/results/"):
            return self.result(path.rsplit("/", 1)[1])
        return httpx.Response(404, json={"error": "not found"})

    def uploads(self) -> list[list[str]]:
        """The file names of each upload request, in order."""
        return [upload_names(r) for r in self.requests if r.method == "POST"]

    def upload(self, request: httpx.Request) -> httpx.Response:
        names = upload_names(request)
        if len(names) > self.max_files:
            return httpx.Response(
                413,
                json={
                    "error": "too_many_files",
                    "filename": names[self.max_files],
                    "reason": f"at most {self.max_files} file(s) per request",
                },
            )
        for name in names:
            if name.startswith("bad"):
                return httpx.Response(
                    400,
                    json={
                        "error": "invalid_image",
                        "filename": name,
                        "reason": "the image is damaged or truncated",
                    },
                )
        jobs = []
        for name in names:
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = name
            jobs.append(
                {
                    "id": job_id,
                    "filename": name,
                    "result_url": f"{RESULTS}/v1/results/{job_id}",
                    "events_url": f"{RESULTS}/v1/results/{job_id}/events",
                }
            )
        return httpx.Response(202, json={"jobs": jobs})

    def finished(self, job_id: str) -> bool:
        return not self.jobs[job_id].startswith("slow")

    def events(self, ids: list[str]) -> httpx.Response:
        done = [i for i in ids if i in self.jobs and self.finished(i)]
        body = sse(("result", str(n), result_body(i, self.jobs[i])) for n, i in enumerate(done, start=1))
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    def result(self, job_id: str) -> httpx.Response:
        if job_id not in self.jobs:
            return httpx.Response(404, json={"error": "unknown job id"})
        if not self.finished(job_id):
            return httpx.Response(202, json={"id": job_id, "status": "pending"})
        return httpx.Response(200, json=result_body(job_id, self.jobs[job_id]))


def upload_names(request: httpx.Request) -> list[str]:
    """The file names of a multipart upload, in order."""
    return [m.decode() for m in re.findall(rb'filename="([^"]*)"', request.content)]
