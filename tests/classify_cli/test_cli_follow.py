"""Following results: one SSE stream resumed with Last-Event-ID after a drop, and polling for stragglers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cli_fakes import RESULTS, DroppingStream, Sleeps, result_body, sse

from classify_cli.client import Job, RetryPolicy
from classify_cli.follow import Follower

pytestmark = pytest.mark.timeout(60)

IDS = ["a", "b", "c"]
SSE_HEADERS = {"Content-Type": "text/event-stream"}
Handler = Callable[[httpx.Request], httpx.Response]


def job(job_id: str) -> Job:
    url = f"{RESULTS}/v1/results/{job_id}"
    return Job(job_id, f"{job_id}.jpg", url, f"{url}/events")


def event(job_id: str, seq: int, name: str = "result") -> tuple[str, str, dict[str, Any]]:
    return name, str(seq), result_body(job_id, f"{job_id}.jpg")


def follow(handler: Handler, policy: RetryPolicy | None = None) -> tuple[list[str], Sleeps]:
    """Run a follower over jobs a, b, c; the ids of the results it handed over, in order, and its waits."""
    received: list[str] = []
    sleeps = Sleeps()

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            jobs = [job(i) for i in IDS]
            on_result = lambda body: received.append(body["id"])  # noqa: E731 - a one-line callback
            await Follower(http, jobs, on_result, policy or RetryPolicy(), sleeps).run()

    asyncio.run(go())
    return received, sleeps


class Recorder:
    """Answers requests from a list of handlers, one per request (the last one repeats), and keeps them."""

    def __init__(self, *answers: Handler) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1](request)

    def streams(self) -> list[tuple[str | None, str]]:
        """(Last-Event-ID, ids) of each stream request."""
        return [
            (r.headers.get("Last-Event-ID"), r.url.params["ids"])
            for r in self.requests
            if r.url.path == "/v1/events"
        ]

    def polls(self) -> list[str]:
        return [r.url.path.rsplit("/", 1)[1] for r in self.requests if r.url.path.startswith("/v1/results/")]


def stream(*events: tuple[str, str, dict[str, Any]], drop: bool = False) -> Handler:
    if drop:
        return lambda _: httpx.Response(200, headers=SSE_HEADERS, stream=DroppingStream(sse(events)))
    return lambda _: httpx.Response(200, headers=SSE_HEADERS, content=sse(events))


def results(request: httpx.Request) -> httpx.Response:
    job_id = request.url.path.rsplit("/", 1)[1]
    return httpx.Response(200, json=result_body(job_id, f"{job_id}.jpg"))


def test_a_dropped_stream_is_resumed_with_last_event_id_and_nothing_is_lost_or_repeated() -> None:
    server = Recorder(stream(event("a", 11), drop=True), stream(event("b", 12), event("c", 14)))
    received, sleeps = follow(server)
    assert received == IDS
    assert server.streams() == [(None, "a,b,c"), ("11", "b,c")]
    assert server.polls() == [], "the resumed stream delivered everything"
    assert sleeps == [0.5], "one short backoff before reconnecting"


def test_a_stream_the_service_ends_early_is_resumed_at_once() -> None:
    early_end = ("timeout", "", {"pending": ["b", "c"]})
    server = Recorder(stream(event("a", 3), early_end), stream(event("b", 4), event("c", 5)))
    received, sleeps = follow(server)
    assert received == IDS
    assert server.streams() == [(None, "a,b,c"), ("3", "b,c")]
    assert sleeps == [0.0]


def test_a_result_sent_twice_is_handed_over_once() -> None:
    server = Recorder(stream(event("a", 1), event("a", 1), event("b", 2), event("c", 3)))
    received, _ = follow(server)
    assert received == IDS


def test_stragglers_of_a_stream_that_ended_are_polled_until_done() -> None:
    pending = {"c": 2}

    def poll(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/results/") and pending["c"] > 0:
            pending["c"] -= 1
            return httpx.Response(202, json={"id": "c", "status": "pending"})
        return results(request)

    server = Recorder(stream(event("a", 1), event("b", 2)), poll)
    received, sleeps = follow(server)
    assert received == IDS
    assert server.polls() == ["c", "c", "c"]
    assert sleeps == [0.5, 0.75], "polling waits longer each round"


def test_a_refused_stream_falls_back_to_polling() -> None:
    server = Recorder(lambda _: httpx.Response(404, json={"error": "unknown job ids"}), results)
    received, _ = follow(server)
    assert received == IDS
    assert len(server.streams()) == 1
    assert server.polls() == IDS


def test_a_busy_results_service_is_asked_again_after_its_retry_after() -> None:
    busy = httpx.Response(503, headers={"Retry-After": "4"}, json={"error": "too many streams"})
    server = Recorder(lambda _: busy, stream(event("a", 1), event("b", 2), event("c", 3)))
    received, sleeps = follow(server)
    assert received == IDS
    assert sleeps == [4.0]


def test_a_stream_that_never_connects_gives_way_to_polling_after_bounded_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            raise httpx.ConnectError("Connection refused")
        return results(request)

    server = Recorder(handler)
    received, sleeps = follow(server, RetryPolicy(max_retries=2, base_delay_s=0.1))
    assert received == IDS
    assert len(server.streams()) == 3
    assert sleeps == pytest.approx([0.1, 0.2])
