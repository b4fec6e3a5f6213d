"""The HTTP server's own defences, on a real uvicorn and real sockets: slow heads and bodies are cut off,
connections, requests in progress and body bytes in flight are capped with 503 + Retry-After, idle
keep-alive connections outlive the clients' pools. A small app stands for the services (no broker)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kafka_local import free_port
from pipeline_core.serving import serve
from pipeline_core.settings import WebSettings
from pipeline_core.web import install_common

pytestmark = pytest.mark.timeout(120)

HEAD_TIMEOUT_S = 1.0
BODY_IDLE_S = 1.0
MIN_RATE = 2000  # bytes/s
MAX_CONNECTIONS = 40
MAX_REQUESTS = 3
BUDGET = 1024 * 1024


class Server:
    """An app behind `install_common`, served by `serve()` in a thread; `/hold` waits until released."""

    def __init__(self, **overrides: object) -> None:
        values: dict[str, object] = {
            "header_timeout_s": HEAD_TIMEOUT_S,
            "body_idle_timeout_s": BODY_IDLE_S,
            "body_min_rate_bps": MIN_RATE,
            "keep_alive_timeout_s": 5,
            "max_connections": MAX_CONNECTIONS,
            "max_concurrent_requests": MAX_REQUESTS,
            "max_body_bytes_in_flight": BUDGET,
            "expose_docs": False,
        }
        values.update(overrides)
        settings = WebSettings(**values)  # type: ignore[arg-type]
        self.release = threading.Event()
        self.holding = 0
        app = FastAPI()
        install_common(app, settings, streams=lambda path: path.endswith("/events"))

        @app.api_route("/hold", methods=["GET", "POST"])
        @app.get("/v1/events")
        async def hold(request: Request) -> JSONResponse:
            body = await request.body()
            self.holding += 1
            try:
                await asyncio.to_thread(self.release.wait, 30)
            finally:
                self.holding -= 1
            return JSONResponse({"received": len(body)})

        @app.post("/upload")
        async def upload(request: Request) -> JSONResponse:
            return JSONResponse({"received": len(await request.body())})

        @app.get("/ping")
        @app.get("/healthz")
        async def ping() -> JSONResponse:
            return JSONResponse({"ok": True})

        self.port = free_port()
        self.server = serve(app, settings, "127.0.0.1", self.port, 1)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release.set()
        self.server.should_exit = True
        self.thread.join(10)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def wait_holding(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while self.holding < count:
            assert time.monotonic() < deadline, f"{self.holding} requests held, not {count}"
            time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection. A reset ends it too: a server that closes
    with bytes of ours unread (the slow client's next header byte) makes the kernel answer them with RST."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_slowloris_heads_are_closed_with_408_and_others_are_still_served(server: Server) -> None:
    clients = [server.connect() for _ in range(30)]
    started = time.monotonic()
    for sock in clients:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
    # One more header byte every 0.3 s: each keeps the connection busy, none completes the head.
    closed: dict[int, bytes] = {}
    while len(closed) < len(clients) and time.monotonic() - started < 10:
        time.sleep(0.3)
        for index, sock in enumerate(clients):
            if index in closed:
                continue
            try:
                sock.sendall(b"X")
            except OSError:
                closed[index] = b""
                continue
            sock.settimeout(0.01)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed with our last byte unread: see read_all
                data = b""
            sock.settimeout(5)  # an answer has begun: the rest of it, to the close
            closed[index] = data + (read_all(sock) if data else b"")
        assert httpx.get(f"{server.url}/ping", timeout=5).status_code == 200
    elapsed = time.monotonic() - started
    assert len(closed) == len(clients), (
        f"{len(clients) - len(closed)} slow clients still held after {elapsed} s"
    )
    assert elapsed < HEAD_TIMEOUT_S * 4
    answered = [data for data in closed.values() if data]
    assert answered and all(data.startswith(b"HTTP/1.1 408 ") for data in answered)


def test_a_connection_that_sends_nothing_is_closed_silently(server: Server) -> None:
    sock = server.connect()
    started = time.monotonic()
    assert read_all(sock) == b""
    assert HEAD_TIMEOUT_S * 0.8 < time.monotonic() - started < HEAD_TIMEOUT_S * 4


def test_an_idle_keep_alive_connection_outlives_the_head_timeout(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/ping").status_code == 200
        time.sleep(HEAD_TIMEOUT_S * 2.5)  # idle between requests is the keep-alive timer's, not the head's
        response = client.get("/ping")
        assert response.status_code == 200
        assert client.get("/ping").status_code == 200
    # One connection for all three requests: none was dropped by the server.
    assert response.extensions["network_stream"] is not None


def test_a_trickled_body_gets_408(server: Server) -> None:
    sock = server.connect()
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    while time.monotonic() - started < 10:
        try:
            sock.sendall(b"x" * 50)  # 250 bytes/s: far below the minimum rate, never idle for long
        except OSError:
            break
        try:
            answer += sock.recv(65536)
        except TimeoutError:
            continue
        if answer:
            break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"request_timeout" in answer
    assert elapsed < BODY_IDLE_S * 4


def test_a_stalled_body_gets_408(server: Server) -> None:
    sock = server.connect()
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert BODY_IDLE_S * 0.8 < time.monotonic() - started < BODY_IDLE_S * 4


def test_a_body_at_a_fair_rate_is_taken_whole(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(6):
            yield b"y" * 4000  # 4000 bytes every 0.5 s: twice the minimum rate, for longer than the grace
            time.sleep(0.5)

    response = httpx.post(f"{server.url}/upload", content=chunks(), timeout=20)
    assert response.status_code == 200
    assert response.json() == {"received": 24000}


def test_requests_past_the_concurrency_cap_get_503_before_their_body_is_read(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        holders = [threading.Thread(target=client.get, args=("/hold",)) for _ in range(MAX_REQUESTS)]
        for thread in holders:
            thread.start()
        server.wait_holding(MAX_REQUESTS)
        refused = httpx.post(f"{server.url}/upload", content=b"z" * 1000, timeout=5)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "busy"
        assert refused.headers["X-Content-Type-Options"] == "nosniff"  # the common headers still apply
        assert httpx.get(f"{server.url}/ping", timeout=5).status_code == 503
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200, "liveness is never shed"
        # Event streams have caps of their own: the request cap leaves them out.
        stream = threading.Thread(target=client.get, args=("/v1/events",))
        stream.start()
        server.wait_holding(MAX_REQUESTS + 1)
        server.release.set()
        for thread in [*holders, stream]:
            thread.join(10)
        assert httpx.post(f"{server.url}/upload", content=b"z" * 1000, timeout=5).status_code == 200


def test_bytes_in_flight_are_capped_by_declared_length_and_by_what_arrives(server: Server) -> None:
    held = threading.Thread(
        target=httpx.post, args=(f"{server.url}/hold",), kwargs={"content": b"a" * (BUDGET * 3 // 4)}
    )
    held.start()
    server.wait_holding(1)
    declared = httpx.post(f"{server.url}/upload", content=b"b" * (BUDGET // 2), timeout=5)
    assert declared.status_code == 503, declared.text
    assert declared.headers["Retry-After"] == "1"
    assert "bytes in flight" in declared.json()["reason"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b"c" * (BUDGET // 16)

    streamed = httpx.post(f"{server.url}/upload", content=chunked(), timeout=5)
    assert streamed.status_code == 503, streamed.text
    server.release.set()
    held.join(10)
    # Released with the requests that held them: the same upload now fits.
    assert httpx.post(f"{server.url}/upload", content=b"b" * (BUDGET // 2), timeout=5).status_code == 200
    assert httpx.post(f"{server.url}/upload", content=chunked(), timeout=5).status_code == 200


def test_connections_past_the_cap_get_503_and_are_closed() -> None:
    with Server(max_connections=3, header_timeout_s=30) as server:
        idle = [server.connect() for _ in range(3)]
        time.sleep(0.2)
        extra = server.connect()
        extra.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 1" in answer.lower()
        assert b"too many open connections" in answer
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{server.url}/ping", timeout=5).status_code == 200
