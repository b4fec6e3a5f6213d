"""An open-loop load generator: uploads at a fixed rate and times each image until its result arrives by SSE.

Open loop (requests leave on schedule whether or not earlier ones finished) so that an overloaded system shows
up as growing latency or shed requests, not as a politely slower client. One SSE stream per upload request
follows all of that request's jobs, as the web page and the CLI do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from httpx_sse import aconnect_sse


@dataclass
class JobTiming:
    """One image's trip, in Unix seconds (client and services share this machine's clock)."""

    sent_at: float
    accepted_at: float
    result_at: float | None = None
    status: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def round_trip_s(self) -> float | None:
        """Upload sent to result received by SSE."""
        return None if self.result_at is None else self.result_at - self.sent_at

    def hops_s(self) -> dict[str, float]:
        """Where the round trip went: API, queue wait, inference, sink, SSE delivery."""
        t = self.timings
        if self.result_at is None or not t:
            return {}
        return {
            "api": self.accepted_at - self.sent_at,
            "queue": t["dequeued_at"] - t["received_at"],
            "inference": t["predicted_at"] - t["dequeued_at"],
            "sink": t["stored_at"] - t["predicted_at"],
            "sse": self.result_at - t["stored_at"],
        }


@dataclass
class LoadResult:
    """Everything one load level produced."""

    offered_images_per_s: float
    duration_s: float
    jobs: list[JobTiming] = field(default_factory=list)
    rejected: int = 0  # 429/503 answers: load shed on purpose, with Retry-After
    errors: list[str] = field(default_factory=list)  # anything else: these are failures
    timed_out: int = 0
    wall_s: float = 0.0

    @property
    def completed(self) -> list[JobTiming]:
        """Jobs whose result arrived."""
        return [j for j in self.jobs if j.result_at is not None]


async def _follow(
    client: httpx.AsyncClient,
    sink_url: str,
    jobs: dict[str, JobTiming],
    timeout_s: float,
    headers: dict[str, str],
) -> int:
    """Stream the jobs' results; return how many did not arrive in time."""
    url = f"{sink_url}/v1/events?ids={','.join(jobs)}"
    try:
        async with asyncio.timeout(timeout_s):
            async with aconnect_sse(client, "GET", url, headers=headers) as source:
                async for event in source.aiter_sse():
                    if event.event != "result":
                        continue
                    now = time.time()
                    body = json.loads(event.data)
                    job = jobs[body["id"]]
                    job.result_at, job.status = now, body["status"]
                    job.timings = body.get("timings") or {}
    except TimeoutError:
        pass
    return sum(1 for j in jobs.values() if j.result_at is None)


async def _one_request(
    client: httpx.AsyncClient,
    api_url: str,
    sink_url: str,
    files: Sequence[tuple[str, bytes]],
    result: LoadResult,
    timeout_s: float,
    headers: dict[str, str],
    retry_after_cap_s: float = 0.0,
) -> None:
    sent_at = time.time()
    try:
        response = await client.post(
            f"{api_url}/v1/images", files=[("file", f) for f in files], headers=headers
        )
    except httpx.HTTPError as e:
        result.errors.append(f"upload: {type(e).__name__}: {e}")
        return
    accepted_at = time.time()
    if response.status_code in (429, 503):
        result.rejected += len(files)
        if retry_after_cap_s:  # a well-behaved client comes back when told (capped: a load level is short)
            await asyncio.sleep(min(retry_after_cap_s, float(response.headers.get("Retry-After") or 1)))
        return
    if response.status_code != 202:
        result.errors.append(f"upload: HTTP {response.status_code}: {response.text[:200]}")
        return
    jobs = {job["id"]: JobTiming(sent_at, accepted_at) for job in response.json()["jobs"]}
    result.jobs.extend(jobs.values())
    try:
        result.timed_out += await _follow(client, sink_url, jobs, timeout_s, headers)
    except httpx.HTTPError as e:
        result.errors.append(f"results stream: {type(e).__name__}: {e}")


async def run_open_loop(
    api_url: str,
    sink_url: str,
    photos: Sequence[tuple[str, bytes]],
    images_per_s: float,
    duration_s: float,
    files_per_request: int = 4,
    result_timeout_s: float = 60.0,
    api_key: str | None = None,
) -> LoadResult:
    """Offer `images_per_s` for `duration_s`, then wait for every accepted image's result."""
    result = LoadResult(images_per_s, duration_s)
    headers = {"X-API-Key": api_key} if api_key else {}
    interval = files_per_request / images_per_s
    cycle = itertools.cycle(photos)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(result_timeout_s, connect=10), limits=limits
    ) as client:
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for n in itertools.count():
            due = start + n * interval
            if due - start >= duration_s:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            files = [next(cycle) for _ in range(files_per_request)]
            tasks.append(
                asyncio.create_task(
                    _one_request(client, api_url, sink_url, files, result, result_timeout_s, headers)
                )
            )
        await asyncio.gather(*tasks)
        result.wall_s = time.monotonic() - start
    return result


async def run_closed_loop(
    api_url: str,
    sink_url: str,
    photos: Sequence[tuple[str, bytes]],
    clients: int,
    duration_s: float,
    files_per_request: int = 4,
    result_timeout_s: float = 60.0,
    api_key: str | None = None,
) -> LoadResult:
    """`clients` users that each upload, wait for their results, and upload again: the sustained throughput
    with a queue that never runs dry and never grows past `clients * files_per_request` images. A user whose
    upload is shed waits as Retry-After says (at most a second) before the next."""
    result = LoadResult(0.0, duration_s)
    headers = {"X-API-Key": api_key} if api_key else {}
    cycle = itertools.cycle(photos)
    limits = httpx.Limits(max_connections=4 * clients, max_keepalive_connections=4 * clients)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(result_timeout_s, connect=10), limits=limits
    ) as client:
        start = time.monotonic()

        async def user() -> None:
            while time.monotonic() - start < duration_s:
                files = [next(cycle) for _ in range(files_per_request)]
                await _one_request(
                    client, api_url, sink_url, files, result, result_timeout_s, headers, retry_after_cap_s=1.0
                )

        await asyncio.gather(*(user() for _ in range(clients)))
        result.wall_s = time.monotonic() - start
    result.offered_images_per_s = len(result.jobs) / result.wall_s if result.wall_s else 0.0
    return result
