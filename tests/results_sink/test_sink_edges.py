"""The sink's routes under hostile traffic, without a broker: the routes on a bare app served by uvicorn, with a
store that records every read.

Forged ids get 404 before the store is read, streams are capped per client as well as in all, the key in the
query string is taken only by the streams, and every answer carries the security headers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sink_helpers import SECRET

from kafka_local import free_port
from pipeline_core.jobs import new_job_id
from pipeline_core.web import install_common
from results_sink.hub import ResultHub
from results_sink.routes import create_router
from results_sink.settings import SinkSettings
from results_sink.store import StoredResult

pytestmark = pytest.mark.timeout(120)
IN_CI = bool(os.environ.get("CI"))
KEY = "tests-api-key-0123456789"
OTHER_CLIENT = "203.0.113.7"  # a documentation address, sent only as X-Forwarded-For: no traffic goes there


class RecordingStore:
    """A results store that holds nothing and remembers every job id it was asked for."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def get(self, job_id: str) -> StoredResult | None:
        self.reads.append(job_id)
        return None

    def results_after(self, job_ids: Sequence[str], after_seq: int) -> list[StoredResult]:
        self.reads.extend(job_ids)
        return []


class BareSink:
    """The sink's routes and common parts on an app without the consumer's lifespan, served by uvicorn."""

    def __init__(self, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "job_id_secret": SECRET,
            "results_store_url": "sqlite:///unused.db",
            "sse_ping_interval_s": 1.0,
        }
        self.settings = SinkSettings(**(values | overrides), _env_file=None)  # type: ignore[call-arg]
        self.store = RecordingStore()
        app = FastAPI()
        app.state.settings, app.state.store = self.settings, self.store
        app.state.hub = ResultHub(queue_limit=self.settings.max_ids_per_stream)
        install_common(app, self.settings)
        app.include_router(create_router(self.settings))
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bare-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BareSink:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the sink did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def bare() -> Iterator[BareSink]:
    # A stream opened by mistake ends after 3 s, instead of hanging the test until its timeout.
    with BareSink(api_key=KEY, sse_stream_timeout_s=3.0) as sink:
        yield sink


@pytest.fixture(scope="module")
def http(bare: BareSink) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bare.url, headers={"X-API-Key": KEY}, timeout=10) as client:
        yield client


REAL = [i for i in (new_job_id(SECRET.encode()) for _ in range(200)) if "-" in i and "_" in i][:10]


@st.composite
def forged_ids(draw: st.DrawFn) -> str:
    """Variants of real ids (alphabet, case, padding, whitespace, look-alikes) and plain junk."""
    job_id = draw(st.sampled_from(REAL))
    at = draw(st.integers(0, len(job_id) - 1))
    return draw(
        st.sampled_from(
            [
                job_id.replace("-", "+"),
                job_id.replace("_", "/"),
                job_id[:at] + job_id[at].swapcase() + job_id[at + 1 :]
                if job_id[at].isalpha()
                else job_id + "=",
                job_id + "=",
                " " + job_id,
                job_id + "\n",
                job_id[:at] + "\uff21" + job_id[at + 1 :],
                job_id[:-1],
            ]
        )
        # Junk, with at least one id left once `?ids=` is split at commas and stripped.
        | st.text(max_size=64).filter(lambda text: any(part.strip() for part in text.split(",")))
    )


def path_of(job_id: str) -> str:
    return quote(job_id, safe="")


@settings(
    max_examples=120,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(job_id=forged_ids())
def test_forged_ids_get_404_without_a_store_read(bare: BareSink, http: httpx.Client, job_id: str) -> None:
    bare.store.reads.clear()
    answers = [
        http.get(f"/v1/results/{path_of(job_id)}"),
        http.get(f"/v1/results/{path_of(job_id)}/events"),
    ]
    # `?ids=` is a list: spaces around each id are dropped, so " <id>" there is the id itself.
    if job_id.strip() not in REAL:
        answers.append(http.get("/v1/events", params={"ids": f"{REAL[0]},{job_id}"}))
    for response in answers:
        assert 400 <= response.status_code < 500, (job_id, response.status_code, response.text)
        body = response.json()
        assert body.get("error") or body.get("detail"), body  # "detail": no route matched (a `/` in the id)
        assert response.headers["x-content-type-options"] == "nosniff"
    assert bare.store.reads == [], f"the store was read for {job_id!r}"


def test_a_real_pending_id_is_read_and_answered_202(bare: BareSink, http: httpx.Client) -> None:
    bare.store.reads.clear()
    assert http.get(f"/v1/results/{REAL[0]}").status_code == 202
    assert bare.store.reads == [REAL[0]]


def test_the_query_key_is_taken_by_the_streams_only(bare: BareSink) -> None:
    job = REAL[1]
    with httpx.Client(base_url=bare.url, timeout=10) as client:
        refused = client.get(f"/v1/results/{job}", params={"api_key": KEY})
        assert refused.status_code == 401
        assert "event-stream" in refused.json()["error"]
        with client.stream("GET", f"/v1/results/{job}/events", params={"api_key": KEY}) as stream:
            assert stream.status_code == 200
            assert "frame-ancestors 'none'" in stream.headers["content-security-policy"]
        with client.stream("GET", "/v1/events", params={"ids": job, "api_key": KEY}) as stream:
            assert stream.status_code == 200


@settings(
    max_examples=80,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(query=st.text(max_size=60), extra=st.sampled_from(["", "&api_key=", "&api_key=x", "&ids=", "&ids=,,"]))
def test_any_query_string_on_the_sink_gets_a_clear_4xx(http: httpx.Client, query: str, extra: str) -> None:
    raw = f"ids={quote(query, safe=',')}{extra}"
    for url in (f"/v1/events?{raw}", f"/v1/results/{REAL[2]}?{quote(query, safe='=&')}{extra}"):
        response = http.get(url)
        assert response.status_code in (202, 400, 401, 404), (url, response.status_code, response.text)
        if response.status_code != 202:
            assert response.json()["error"]


def open_streams(client: httpx.Client, count: int, **headers: str) -> list[Any]:
    """`count` streams on pending jobs, open until closed; each a (context manager, response) pair."""
    streams = []
    for n in range(count):
        manager = client.stream("GET", f"/v1/results/{REAL[n % len(REAL)]}/events", headers=headers)
        streams.append((manager, manager.__enter__()))
    return streams


def stream_status(client: httpx.Client, url: str) -> int:
    """The status a stream request is answered with; the stream itself is closed at once."""
    with client.stream("GET", url) as response:
        return response.status_code


def close_streams(streams: list[Any]) -> None:
    for manager, _response in streams:
        manager.__exit__(None, None, None)


def test_one_client_gets_429_past_its_share_and_others_still_stream() -> None:
    with (
        BareSink(max_sse_streams_per_client=3) as sink,
        httpx.Client(base_url=sink.url, timeout=10) as client,
    ):
        streams = open_streams(client, 3)
        try:
            assert [r.status_code for _, r in streams] == [200, 200, 200]
            refused = client.get(f"/v1/events?ids={REAL[0]}")
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "5"
            assert "the most one client may open" in refused.json()["error"]
            assert client.get(f"/v1/results/{REAL[0]}/events").status_code == 429
            # Another client (as the trusted local proxy reports it) has its own share.
            other = open_streams(client, 1, **{"X-Forwarded-For": OTHER_CLIENT})
            assert other[0][1].status_code == 200
            close_streams(other)
        finally:
            close_streams(streams)
        # Closed streams give their slots back.
        deadline = time.monotonic() + 10
        while (status := stream_status(client, f"/v1/events?ids={REAL[0]}")) == 429:
            assert time.monotonic() < deadline, "slots were not given back"
            time.sleep(0.05)
        assert status == 200


def test_the_total_cap_still_answers_503() -> None:
    with (
        BareSink(max_sse_connections=2, max_sse_streams_per_client=5) as sink,
        httpx.Client(base_url=sink.url, timeout=10) as client,
    ):
        streams = open_streams(client, 2)
        try:
            refused = client.get(f"/v1/events?ids={REAL[0]}", headers={"X-Forwarded-For": OTHER_CLIENT})
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "5"
            assert "live streams" in refused.json()["error"]
        finally:
            close_streams(streams)
