"""The SSE routes over a real uvicorn server and broker: live and stored results, resumption, limits, ends."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from prometheus_client import REGISTRY
from sink_helpers import SinkServer, prediction
from sse_starlette.sse import AppStatus

pytestmark = pytest.mark.timeout(60)


def stored_seq(sink: SinkServer, job_id: str) -> int:
    stored = sink.app.state.store.get(job_id)
    assert stored is not None
    return int(stored.seq)


def wait_stored(sink: SinkServer, *job_ids: str) -> None:
    sink.wait_until(lambda: len(sink.app.state.store.results_after(list(job_ids), 0)) == len(job_ids))


def read_all(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[ServerSentEvent]:
    with connect_sse(client, "GET", url, headers=dict(headers or {})) as source:
        assert source.response.status_code == 200
        return list(source.iter_sse())


def test_job_stream_sends_the_result_once_it_is_stored_then_ends(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    job = job_id()
    with connect_sse(client, "GET", f"/v1/results/{job}/events") as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        sink.wait_until(lambda: sink.subscribers == 1)  # subscribed and waiting before the result exists
        publish(prediction(job))
        events = list(source.iter_sse())

    assert [e.event for e in events] == ["result"]
    assert events[0].id == str(stored_seq(sink, job))
    assert events[0].json() == client.get(f"/v1/results/{job}").json()


def test_job_stream_of_a_stored_result_sends_it_at_once_and_nothing_after_its_id(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    job = job_id()
    publish(prediction(job, status="failed"))
    wait_stored(sink, job)

    events = read_all(client, f"/v1/results/{job}/events")
    assert [(e.event, e.json()["status"]) for e in events] == [("result", "failed")]

    # A reconnecting EventSource that saw the result gets 204, which tells it to stop reconnecting.
    again = client.get(f"/v1/results/{job}/events", headers={"Last-Event-ID": events[0].id})
    assert (again.status_code, again.content) == (204, b"")


def test_events_stream_sends_stored_results_first_then_live_ones_then_ends(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    early, late_1, late_2 = job_id(), job_id(), job_id()
    publish(prediction(early))
    wait_stored(sink, early)

    with connect_sse(client, "GET", "/v1/events", params={"ids": f"{late_1},{early},{late_2}"}) as source:
        stream = source.iter_sse()
        first = next(stream)
        assert (first.event, first.json()["id"]) == ("result", early)
        publish(prediction(late_1), prediction(late_2, status="failed"))
        rest = list(stream)

    assert {e.json()["id"] for e in rest} == {late_1, late_2}
    ids = [int(e.id) for e in [first, *rest]]
    assert ids == sorted(ids)


def test_last_event_id_resumes_with_exactly_the_missed_results(
    sink: SinkServer, client: httpx.Client, publish: Callable[..., None], job_id: Callable[[], str]
) -> None:
    jobs = [job_id() for _ in range(4)]
    for job in jobs[:3]:
        publish(prediction(job))  # one at a time, so their seqs follow this order
        wait_stored(sink, job)
    url = f"/v1/events?ids={','.join(jobs)}"

    with connect_sse(client, "GET", url, headers={"Last-Event-ID": str(stored_seq(sink, jobs[0]))}) as source:
        stream = source.iter_sse()
        resumed = [next(stream), next(stream)]
        publish(prediction(jobs[3]))
        resumed += list(stream)

    assert [e.json()["id"] for e in resumed] == jobs[1:]
    assert [e.id for e in resumed] == [str(stored_seq(sink, j)) for j in jobs[1:]]
    everything_seen = client.get(url, headers={"Last-Event-ID": resumed[-1].id})
    assert everything_seen.status_code == 204


def test_bad_stream_requests_are_refused_before_streaming(
    start_sink: Callable[..., SinkServer], job_id: Callable[[], str]
) -> None:
    sink = start_sink(max_ids_per_stream=3)
    job = job_id()
    with httpx.Client(base_url=sink.url, timeout=10) as client:
        for url in (f"/v1/results/{job}/events", f"/v1/events?ids={job}"):
            for bad in ("abc", "-1", "1.5", "9" * 40):
                response = client.get(url, headers={"Last-Event-ID": bad})
                assert response.status_code == 400, (url, bad)
                assert "Last-Event-ID" in response.json()["error"]
        assert client.get("/v1/events").status_code == 400
        assert client.get("/v1/events?ids=,,").status_code == 400
        too_many = client.get("/v1/events", params={"ids": ",".join(job_id() for _ in range(4))})
        assert too_many.status_code == 400
        assert "at most 3" in too_many.json()["error"]
        unknown = client.get("/v1/events", params={"ids": f"{job},forged"})
        assert unknown.status_code == 404
        assert "'forged'" in unknown.json()["error"]
        assert client.get("/v1/results/forged/events").status_code == 404
    assert sink.subscribers == 0


def test_a_disconnecting_client_is_removed_from_the_hub(
    sink: SinkServer, client: httpx.Client, job_id: Callable[[], str]
) -> None:
    def gauge() -> float:
        return REGISTRY.get_sample_value("sse_clients") or 0.0

    with client.stream("GET", "/v1/events", params={"ids": f"{job_id()},{job_id()}"}) as response:
        assert response.status_code == 200
        sink.wait_until(lambda: sink.subscribers == 1)
        assert gauge() == 1
    # Leaving the block closed the connection; the server notices and ends the stream.
    sink.wait_until(lambda: sink.subscribers == 0)
    assert gauge() == 0


def test_a_waiting_stream_pings_and_ends_with_a_timeout_event(
    start_sink: Callable[..., SinkServer], job_id: Callable[[], str]
) -> None:
    sink = start_sink(sse_ping_interval_s=0.3, sse_stream_timeout_s=1.5)
    job = job_id()
    with (
        httpx.Client(base_url=sink.url, timeout=10) as client,
        client.stream("GET", f"/v1/results/{job}/events") as response,
    ):
        lines = list(response.iter_lines())

    assert any(line.startswith(": ping") for line in lines)
    assert "event: timeout" in lines
    data = next(line for line in lines if line.startswith("data: "))
    assert json.loads(data.removeprefix("data: ")) == {"pending": [job]}
    sink.wait_until(lambda: sink.subscribers == 0)


def test_streams_above_the_limit_get_503_with_retry_after(
    start_sink: Callable[..., SinkServer], job_id: Callable[[], str]
) -> None:
    sink = start_sink(max_sse_connections=1)
    with (
        httpx.Client(base_url=sink.url, timeout=10) as client,
        client.stream("GET", f"/v1/results/{job_id()}/events"),
    ):
        sink.wait_until(lambda: sink.subscribers == 1)
        refused = client.get(f"/v1/results/{job_id()}/events")
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "retry later" in refused.json()["error"]


def test_streams_end_with_a_shutdown_event_when_the_server_stops(
    sink: SinkServer, client: httpx.Client, job_id: Callable[[], str]
) -> None:
    job = job_id()
    try:
        with connect_sse(client, "GET", f"/v1/results/{job}/events") as source:
            sink.wait_until(lambda: sink.subscribers == 1)
            AppStatus.should_exit = True  # what uvicorn's signal handler sets, via sse-starlette's hook
            events = list(source.iter_sse())
    finally:
        AppStatus.should_exit = False
    assert [(e.event, e.json()) for e in events] == [("shutdown", {"pending": [job]})]
