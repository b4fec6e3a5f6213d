"""Thousands of idle SSE streams on a real sink process: memory stays bounded, a stuck client stalls no one,
every stream is released on close, and streams above MAX_SSE_CONNECTIONS get 503 with Retry-After."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from httpx_sse import aconnect_sse
from sink_helpers import SECRET, prediction

from kafka_local import free_port
from pipeline_core.settings import PipelineSettings

pytestmark = pytest.mark.timeout(300)

IDLE_STREAMS = 2000
MAX_KB_PER_STREAM = 100  # 2000 streams in under 200 MB of RSS
SLOW_CLIENT_JOBS = 300  # ids fit in one request line (uvicorn reads at most 16 kB of request head)
LONG_FILENAME = "x" * 4096 + ".jpg"  # 300 such results: more than the socket buffers and uvicorn's hold
LIVE_RESULT_WITHIN_S = 5.0
SEND_TIMEOUT_S = 2.0
REPO = Path(__file__).resolve().parents[2]


class SinkProcess:
    """`python -m results_sink` as its own process, so its memory is the sink's alone."""

    def __init__(self, settings: PipelineSettings, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = data_dir / f"sink-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "CORS_ORIGINS")}
        self.env = (
            base
            | {
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
                "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "TOPIC_PREDICTIONS": settings.topic_predictions,
                "TOPIC_PREDICTIONS_SHADOW": settings.topic_predictions_shadow,
                "TOPIC_DEAD_LETTER_SHADOW": settings.topic_dead_letter_shadow,
                "TOPIC_DEAD_LETTER": settings.topic_dead_letter,
                "TOPIC_FEEDBACK": settings.topic_feedback,
                "CONSUMER_GROUP_SINK": settings.consumer_group_sink,
                "SINK_HOST": "127.0.0.1",
                "SINK_PORT": str(self.port),
                "RESULTS_STORE_URL": f"sqlite:///{data_dir.resolve()}/results-{self.port}.db",
                "JOB_ID_SECRET": SECRET,
                # Every stream here comes from this one test process: above the per-client cap's default.
                "MAX_SSE_STREAMS_PER_CLIENT": str(IDLE_STREAMS + 100),
                "LOG_LEVEL": "WARNING",
            }
            | env
        )
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "results_sink"],
                cwd=self.data_dir,  # no project .env is read
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with httpx.Client(base_url=self.url, timeout=5) as client:
            self.wait_until(lambda: self._ready(client), timeout_s)

    def _ready(self, client: httpx.Client) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the sink exited ({self.process.returncode}): {self.log_path.read_text()}")
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def rss_bytes(self) -> int:
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def sse_clients(self) -> int:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        match = re.search(r"^sse_clients (\S+)$", text, re.MULTILINE)
        assert match, "no sse_clients gauge in /metrics"
        return int(float(match.group(1)))

    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.1)


@pytest.fixture
def start_sink_process(
    pipeline_settings: PipelineSettings, tmp_path: Path
) -> Iterator[Callable[..., SinkProcess]]:
    """Start a sink process with these environment overrides; stopped (killed if need be) after the test."""
    started: list[SinkProcess] = []

    def start(**env: str) -> SinkProcess:
        sink = SinkProcess(pipeline_settings, tmp_path, **env)
        started.append(sink)
        sink.start()
        return sink

    yield start
    for sink in started:
        sink.stop()


def stream_request(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()


async def open_stream(port: int, path: str) -> tuple[str, asyncio.StreamWriter]:
    """Open one stream over a raw connection and read only its status line and headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(stream_request(port, path))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    return head.decode("latin-1"), writer


async def open_idle_streams(port: int, paths: list[str]) -> list[asyncio.StreamWriter]:
    """Open every path as a stream, 100 connection attempts at a time; each must answer 200."""
    gate = asyncio.Semaphore(100)

    async def one(path: str) -> asyncio.StreamWriter:
        async with gate:
            head, writer = await open_stream(port, path)
        assert head.startswith("HTTP/1.1 200"), head
        return writer

    return list(await asyncio.gather(*(one(path) for path in paths)))


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


def stuck_client(port: int, path: str) -> socket.socket:
    """A client that asks for a stream and never reads it, with a tiny receive window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(stream_request(port, path))
    return sock


def test_thousands_of_idle_streams_stay_bounded_and_a_stuck_client_stalls_no_one(
    start_sink_process: Callable[..., SinkProcess],
    publish: Callable[..., None],
    job_id: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = start_sink_process(
        SSE_PING_INTERVAL_S="5",
        SSE_SEND_TIMEOUT_S=str(SEND_TIMEOUT_S),
        MAX_IDS_PER_STREAM=str(SLOW_CLIENT_JOBS),
    )
    asyncio.run(_idle_streams_scenario(sink, publish, job_id, capsys))
    sink.wait_until(lambda: sink.sse_clients() == 0)


async def _idle_streams_scenario(
    sink: SinkProcess,
    publish: Callable[..., None],
    job_id: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Warm up the stream code paths once, so the baseline is not charged with lazy imports.
    await close_all(await open_idle_streams(sink.port, [f"/v1/results/{job_id()}/events"] * 5))
    await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == 0)
    rss_before = sink.rss_bytes()

    idle = await open_idle_streams(sink.port, [f"/v1/results/{job_id()}/events" for _ in range(IDLE_STREAMS)])
    try:
        await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == IDLE_STREAMS)
        await asyncio.sleep(6)  # a ping round went out on every stream
        rss_open = sink.rss_bytes()
        per_stream_kb = (rss_open - rss_before) / IDLE_STREAMS / 1024
        with capsys.disabled():
            print(
                f"\n{IDLE_STREAMS} idle SSE streams: sink RSS {rss_before / 2**20:.1f} MB -> "
                f"{rss_open / 2**20:.1f} MB ({per_stream_kb:.1f} kB per stream)"
            )
        assert per_stream_kb < MAX_KB_PER_STREAM

        await _stuck_client_stalls_no_one(sink, publish, job_id, capsys)
    finally:
        await close_all(idle)
    await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == 0)


async def _stuck_client_stalls_no_one(
    sink: SinkProcess,
    publish: Callable[..., None],
    job_id: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    stuck_jobs = [job_id() for _ in range(SLOW_CLIENT_JOBS)]
    stuck = stuck_client(sink.port, f"/v1/events?ids={','.join(stuck_jobs)}")
    try:
        await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == IDLE_STREAMS + 1)
        async with httpx.AsyncClient(base_url=sink.url, timeout=30) as client:
            waited_s = await _live_result_latency(sink, client, publish, job_id(), stuck_jobs)
        with capsys.disabled():
            print(f"a normal client got its result {waited_s:.2f} s after publishing, beside a stuck one")
        assert waited_s < LIVE_RESULT_WITHIN_S
        # The stuck client is dropped once one send to it has waited SSE_SEND_TIMEOUT_S.
        await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == IDLE_STREAMS)
    finally:
        stuck.close()


async def _live_result_latency(
    sink: SinkProcess,
    client: httpx.AsyncClient,
    publish: Callable[..., None],
    job: str,
    stuck_jobs: list[str],
) -> float:
    """Seconds from publishing `job`'s result (after the stuck client's many) to a normal client reading it."""
    async with aconnect_sse(client, "GET", f"/v1/results/{job}/events") as source:
        assert source.response.status_code == 200
        await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == IDLE_STREAMS + 2)
        big = [prediction(j).model_copy(update={"filename": LONG_FILENAME}) for j in stuck_jobs]
        await asyncio.to_thread(publish, *big)
        published_at = time.monotonic()
        await asyncio.to_thread(publish, prediction(job))
        events = [event async for event in source.aiter_sse()]
        waited_s = time.monotonic() - published_at
    assert [(e.event, e.json()["id"]) for e in events] == [("result", job)]
    return waited_s


def test_streams_above_max_sse_connections_get_503_with_retry_after(
    start_sink_process: Callable[..., SinkProcess], job_id: Callable[[], str]
) -> None:
    limit = 50
    sink = start_sink_process(MAX_SSE_CONNECTIONS=str(limit))

    async def scenario() -> dict[str, Any]:
        writers = await open_idle_streams(sink.port, [f"/v1/results/{job_id()}/events" for _ in range(limit)])
        try:
            await asyncio.to_thread(sink.wait_until, lambda: sink.sse_clients() == limit)
            async with httpx.AsyncClient(base_url=sink.url, timeout=30) as client:
                refused = await client.get(f"/v1/results/{job_id()}/events")
                refused_many = await client.get("/v1/events", params={"ids": job_id()})
            return {
                "one": (refused.status_code, refused.headers.get("retry-after"), refused.json()),
                "many": (refused_many.status_code, refused_many.headers.get("retry-after")),
            }
        finally:
            await close_all(writers)

    answers = asyncio.run(scenario())
    status, retry_after, body = answers["one"]
    assert (status, retry_after) == (503, "5")
    assert "live streams" in str(body)
    assert answers["many"] == (503, "5")
    sink.wait_until(lambda: sink.sse_clients() == 0)
    # Capacity is back once streams close.
    with (
        httpx.Client(base_url=sink.url, timeout=30) as client,
        client.stream("GET", f"/v1/results/{job_id()}/events") as response,
    ):
        assert response.status_code == 200
