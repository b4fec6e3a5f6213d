"""One trace per image, from the upload through the consumer to the sink and the SSE event that delivers it.

In one process first, on the real broker with the real model and the SDK's in-memory exporter: the API app, an
inference worker and the sink (served by uvicorn), each span's parent checked. Then as `make run` runs it,
three processes exporting OTLP/HTTP to a collector this test serves: one trace per image across the services.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import stream_results, upload, write_raw

from inference_consumer.model import load_classifier
from inference_consumer.settings import ConsumerSettings
from inference_consumer.worker import InferenceWorker
from kafka_local import free_port
from launcher.system import System
from pipeline_core.events import ImageEvent, ImageMeta, encode_image
from pipeline_core.jobs import new_job_id
from pipeline_core.serving import serve
from pipeline_core.settings import PipelineSettings
from producer_api.app import create_app as create_api
from producer_api.settings import ApiSettings
from results_sink.app import create_app as create_sink
from results_sink.settings import SinkSettings

pytestmark = [pytest.mark.timeout(600)]

SECRET = "tests-tracing-job-id-secret"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
# Each image's trace, hop by hop: (span name or its start, the name of its parent's, or None for the root).
HOPS = {
    "POST /v1/images": None,  # the API's request (FastAPI's server span)
    "publish images": "POST /v1/images",  # the image record, sent and acknowledged
    "queue wait": "publish images",  # in the images topic, until the consumer polled it
    "classify": "publish images",  # its share of the batch, in the consumer
    "preprocess": "classify",
    "inference": "classify",
    "publish predictions": "publish images",  # the prediction, handed to the producer
    "store predictions": "publish predictions",  # written by the sink
    "deliver": "store predictions",  # sent to the client in an SSE event
}


@dataclass(frozen=True)
class SpanSeen:
    """A span as the tests compare them, from the in-memory exporter or from an OTLP request."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    service: str
    start_ns: int
    end_ns: int
    job_id: str | None = None  # the `job.id` attribute


def hop_of(name: str) -> str:
    """`publish my-images-topic-x` -> `publish images`: the hop, whatever this test's topics are called."""
    for hop in HOPS:
        verb, _, what = hop.partition(" ")
        if name == hop or (
            what in ("images", "predictions") and name.startswith(f"{verb} ") and what in name
        ):
            return hop
    return name


def check_image_trace(spans: list[SpanSeen], trace_id: str, job_id: str) -> dict[str, SpanSeen]:
    """The image's branch of its trace holds each hop once (each delivery is one), each a child of the hop
    before it. An upload of several images is one request: a trace with a branch per image."""
    mine = [s for s in spans if s.trace_id == trace_id]
    image = [s for s in mine if s.job_id == job_id]
    classify = {s.span_id for s in image if hop_of(s.name) == "classify"}
    image += [
        s for s in mine if s.parent_id in classify or (s.parent_id is None or s.name.startswith("POST"))
    ]
    by_hop: dict[str, list[SpanSeen]] = defaultdict(list)
    for span in set(image):
        by_hop[hop_of(span.name)].append(span)
    missing = set(HOPS) - set(by_hop)
    assert not missing, f"trace {trace_id} lacks {sorted(missing)}; has {sorted(by_hop)}"
    found = {hop: spans_of_hop[0] for hop, spans_of_hop in by_hop.items()}
    for hop, parent in HOPS.items():
        assert len(by_hop[hop]) == 1 or hop == "deliver", (hop, by_hop[hop])
        span = found[hop]
        if parent is not None:
            assert span.parent_id == found[parent].span_id, f"{hop}'s parent is not {parent}"
        assert span.start_ns <= span.end_ns
    return found


def from_sdk(span: ReadableSpan) -> SpanSeen:
    context, parent = span.context, span.parent
    assert context is not None
    return SpanSeen(
        span.name,
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
        f"{parent.span_id:016x}" if parent is not None else None,
        "",
        span.start_time or 0,
        span.end_time or 0,
        _job_id((span.attributes or {}).get("job.id")),
    )


def _job_id(value: object) -> str | None:
    return str(value) if value is not None else None


def _answers_ready(url: str) -> bool:
    # The servers' threads were only just started: until uvicorn has bound its port, a refused connection
    # means "not yet", as a non-200 does (CI once failed this fixture on exactly that).
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def in_process_pipeline(
    memory_spans: InMemorySpanExporter, pipeline_settings: PipelineSettings, tmp_path: Any
) -> Iterator[tuple[httpx.Client, str]]:
    """The API app on a port of its own, an inference worker and the sink, in this process, on the real broker."""
    base = pipeline_settings.model_dump() | {"job_id_secret": SECRET, "api_key": None}
    sink_settings = SinkSettings(**base, results_store_url=f"sqlite:///{tmp_path}/results.db", _env_file=None)  # type: ignore[call-arg]
    sink_port, api_port = free_port(), free_port()
    api_settings = ApiSettings(**base, results_public_url=f"http://127.0.0.1:{sink_port}", _env_file=None)  # type: ignore[call-arg]
    consumer_settings = ConsumerSettings(**pipeline_settings.model_dump(), _env_file=None)  # type: ignore[call-arg]
    worker = InferenceWorker(consumer_settings, load_classifier(cache_dir=consumer_settings.model_cache_dir))
    servers = [
        serve(create_sink(sink_settings), sink_settings, "127.0.0.1", sink_port, 2),
        serve(create_api(api_settings), api_settings, "127.0.0.1", api_port, 2),
    ]
    threads = [threading.Thread(target=s.run, daemon=True) for s in servers]
    threads.append(threading.Thread(target=worker.run, daemon=True))
    for thread in threads:
        thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
            deadline = time.monotonic() + 60
            for url in (f"http://127.0.0.1:{sink_port}/readyz", f"http://127.0.0.1:{api_port}/readyz"):
                while not _answers_ready(url):
                    assert time.monotonic() < deadline, f"{url} not ready"
                    time.sleep(0.2)
            yield client, f"http://127.0.0.1:{sink_port}"
    finally:
        worker.stop()
        for server in servers:
            server.should_exit = True
        for thread in threads:
            thread.join(30)


def test_each_image_is_one_trace_across_the_hops_in_one_process(
    in_process_pipeline: tuple[httpx.Client, str],
    memory_spans: InMemorySpanExporter,
    photos: dict[str, bytes],
) -> None:
    api, sink_url = in_process_pipeline
    # One upload continues the client's trace; the other starts one.
    continued = api.post(
        "/v1/images",
        files=[("file", ("coffee.jpg", photos["coffee"]))],
        headers={"traceparent": CLIENT_TRACEPARENT},
    )
    assert continued.status_code == 202, continued.text
    started = upload(api, {"chelsea.jpg": photos["chelsea"], "flower.jpg": photos["flower"]})
    ids = [continued.json()["jobs"][0]["id"], *(job["id"] for job in started)]
    streamed = {str(r["id"]): r for _event_id, r in stream_results(sink_url, ids, timeout_s=120)}
    assert set(streamed) == set(ids)

    traces = {job: str(streamed[job]["trace_id"]) for job in ids}
    assert traces[ids[0]] == CLIENT_TRACE, "the client's trace is continued"
    assert traces[ids[1]] == traces[ids[2]] != CLIENT_TRACE, "one upload of two images: one request's trace"
    with httpx.Client(base_url=sink_url, timeout=10) as sink:
        assert all(sink.get(f"/v1/results/{job}").json()["trace_id"] == traces[job] for job in ids)

    deadline = time.monotonic() + 10
    while True:  # the deliver spans end as the stream sends, just after the client read them
        spans = [from_sdk(s) for s in memory_spans.get_finished_spans()]
        try:
            hops = check_image_trace(spans, traces[ids[0]], ids[0])
            for job in ids[1:]:
                check_image_trace(spans, traces[job], job)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert hops["POST /v1/images"].parent_id == "00f067aa0ba902b7", "a child of the client's span"
    assert hops["deliver"].start_ns >= hops["store predictions"].start_ns
    # The upload of two: each image a branch of its own under the one request, and nothing else in it.
    two = [s for s in spans if s.trace_id == traces[ids[1]]]
    assert sum(hop_of(s.name) == "publish images" for s in two) == 2
    assert sum(hop_of(s.name) == "store predictions" for s in two) == 2
    assert {hop_of(s.name) for s in two} == set(HOPS)


def test_hostile_trace_contexts_start_traces_of_their_own_and_fail_nothing(
    in_process_pipeline: tuple[httpx.Client, str],
    memory_spans: InMemorySpanExporter,
    pipeline_settings: PipelineSettings,
    photos: dict[str, bytes],
) -> None:
    """Malformed, oversized and forged contexts, in an upload's HTTP headers and in an image record's Kafka
    headers written by a foreign producer: every image is still classified, in a trace of its own."""
    api, sink_url = in_process_pipeline
    ids = []
    for headers in (
        {"traceparent": "00-" + "z" * 32 + "-" + "1" * 16 + "-01"},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01", "tracestate": "k=v"},
        {"traceparent": CLIENT_TRACEPARENT + "-" + "x" * 6000, "tracestate": "k=" + "v" * 6000},
        {"traceparent": "not-a-trace-context", "baggage": "a=" + "b" * 6000},
    ):
        response = api.post("/v1/images", files=[("file", ("c.jpg", photos["coffee"]))], headers=headers)
        assert response.status_code == 202, (headers, response.text)
        ids.append(response.json()["jobs"][0]["id"])
    # Control characters in a header value are not HTTP: the server refuses the request before any route.
    refused = api.post(
        "/v1/images", files=[("file", ("c.jpg", photos["coffee"]))], headers={"traceparent": "\x01"}
    )
    assert refused.status_code == 400, refused.text
    forged = []
    for trace_headers in (
        [("traceparent", b"\xff" * 100), ("tracestate", b"x" * 50_000)],
        [("traceparent", None), ("traceparent", CLIENT_TRACEPARENT.upper().encode())],
        [("traceparent", CLIENT_TRACEPARENT.encode()), ("tracestate", b"\x00\x01=\x02")],
    ):
        job = new_job_id(SECRET.encode())
        meta = ImageMeta(job_id=job, filename="f.jpg", content_type="image/jpeg", received_at=time.time())
        key, value, headers = encode_image(ImageEvent(meta, photos["chelsea"]))
        forged.append((key, value, [*headers, *trace_headers]))
        ids.append(job)
    write_raw(pipeline_settings, pipeline_settings.topic_images, forged)

    streamed = {str(r["id"]): r for _event_id, r in stream_results(sink_url, ids, timeout_s=120)}
    assert set(streamed) == set(ids) and all(r["status"] == "done" for r in streamed.values())
    traces = [streamed[job]["trace_id"] for job in ids]
    assert all(isinstance(t, str) and len(t) == 32 and t != "0" * 32 for t in traces), traces
    assert len(set(traces[:-1])) == len(traces) - 1, "each unreadable context: a trace of its own"
    assert traces[-1] == CLIENT_TRACE, (
        "a readable context in a foreign record is continued, its junk state not"
    )


# ---- as `make run` runs it: three processes, OTLP/HTTP to a collector ----


class Collector:
    """An OTLP/HTTP trace receiver on a free port: what a collector (or Jaeger) would get from the services."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[SpanSeen] = []
        self.requests = 0
        lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    collector.requests += 1
                    for resource in request.resource_spans:
                        service = next(
                            (
                                a.value.string_value
                                for a in resource.resource.attributes
                                if a.key == "service.name"
                            ),
                            "",
                        )
                        for scope in resource.scope_spans:
                            for s in scope.spans:
                                collector.spans.append(
                                    SpanSeen(
                                        s.name,
                                        s.trace_id.hex(),
                                        s.span_id.hex(),
                                        s.parent_span_id.hex() or None,
                                        service,
                                        s.start_time_unix_nano,
                                        s.end_time_unix_nano,
                                        next(
                                            (a.value.string_value for a in s.attributes if a.key == "job.id"),
                                            None,
                                        ),
                                    )
                                )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_make_run_exports_one_trace_per_image_over_otlp(
    system_factory,  # type: ignore[no-untyped-def]
    photos: dict[str, bytes],
) -> None:
    collector = Collector()
    try:
        system: System = system_factory(
            consumers=1,
            TRACING_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="200",  # export every 0.2 s instead of 5 s
        )
        with httpx.Client(base_url=system.api_url, timeout=60) as client:
            jobs = upload(client, {f"{name}.jpg": data for name, data in photos.items()})
        ids = [job["id"] for job in jobs]
        streamed = {str(r["id"]): r for _event_id, r in stream_results(system.sink_url, ids, timeout_s=180)}
        assert set(streamed) == set(ids)
        trace_id = str(streamed[ids[0]]["trace_id"])
        assert {str(r["trace_id"]) for r in streamed.values()} == {trace_id}, "one upload request, one trace"

        deadline = time.monotonic() + 30
        while True:
            try:
                hops = {job: check_image_trace(list(collector.spans), trace_id, job) for job in ids}
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        services = {hop: span.service for hop, span in hops[ids[0]].items()}
        assert services["POST /v1/images"] == services["publish images"] == "producer_api"
        assert services["classify"] == services["inference"] == "inference_consumer"
        assert services["store predictions"] == services["deliver"] == "results_sink"
        mine = [s for s in collector.spans if s.trace_id == trace_id]
        assert sum(hop_of(s.name) == "classify" for s in mine) == len(ids), (
            "each image classified once, traced"
        )
        # Probes and scrapes are not work: not one span for them.
        assert not [
            s for s in collector.spans if "readyz" in s.name or "healthz" in s.name or "metrics" in s.name
        ]
    finally:
        collector.close()
