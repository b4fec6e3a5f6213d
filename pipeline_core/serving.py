"""How the two web services face slow, greedy and numerous clients: the HTTP server's timeouts and limits.

Without a reverse proxy in front (docs/operations.md says what to put there in production), the services hold
on their own:

- **Request heads**: a client has `HEADER_TIMEOUT_S` from the first byte of a request (or from connecting) to
  send all of its head; a slowloris client that sends a byte every few seconds is closed, with 408 if it sent
  anything. uvicorn has no such timeout: it only times idle keep-alive connections.
- **Bodies**: between two chunks at most `BODY_IDLE_TIMEOUT_S`, and on average at least `BODY_MIN_RATE_BPS`
  once `BODY_IDLE_TIMEOUT_S` has passed; a client that trickles its body gets 408 and is closed.
- **Connections**: past `MAX_CONNECTIONS` open ones, a new connection's first request gets 503 + Retry-After
  and the connection is closed, so the process never runs out of file descriptors.
- **Requests**: past `MAX_CONCURRENT_REQUESTS` in progress (event streams excepted: they have caps of their
  own), a request gets 503 + Retry-After before any of its body is read.
- **Bytes in flight**: the request bodies being received and held, across all requests, stay under
  `MAX_BODY_BYTES_IN_FLIGHT`; a request that would pass it gets 503 + Retry-After (a declared Content-Length
  is checked before reading, a chunked body as it arrives), never an out-of-memory kill.
- **Keep-alive**: idle connections stay open `KEEP_ALIVE_TIMEOUT_S`, longer than the idle time of common
  client pools, so that a client never sends on a connection the server is closing at the same moment
  (what "Remote end closed connection without response" was, under load, with uvicorn's 5 s default).

`serve()` is the one place the services start uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from pipeline_core.settings import WebSettings

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_HEAD_TIMEOUT_BODY = json.dumps(
    {"error": "request_timeout", "reason": "the request head did not arrive in time"}
).encode()
# Written straight to the socket: no request was parsed, so there is no ASGI cycle to answer through.
_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY)
)


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """The limits of one service's HTTP server (see the module docstring)."""

    header_timeout_s: float
    body_idle_timeout_s: float
    body_min_rate_bps: int
    keep_alive_timeout_s: float
    max_connections: int
    max_concurrent_requests: int
    max_body_bytes_in_flight: int

    @classmethod
    def of(cls, settings: WebSettings) -> ServingLimits:
        """The limits a service's settings give."""
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_idle_timeout_s=settings.body_idle_timeout_s,
            body_min_rate_bps=settings.body_min_rate_bps,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
            max_connections=settings.max_connections,
            max_concurrent_requests=settings.max_concurrent_requests,
            max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
        )


class RequestTimeout(Exception):
    """The client did not send its body fast enough."""


class _InFlightExceeded(Exception):
    """A chunked body grew past what the bytes-in-flight budget has left."""


async def _send_json(send: Callable[..., Any], status: int, body: dict[str, str], *, close: bool) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _busy(reason: str) -> dict[str, str]:
    return {"error": "busy", "reason": f"{reason}; retry after {RETRY_AFTER_S} s"}


class RequestGuard:
    """ASGI middleware: the concurrency cap, the bytes-in-flight budget and the body timeouts.

    `unmetered` tells the paths left out of the concurrency cap (long-lived event streams, capped elsewhere).
    """

    def __init__(
        self, app: Any, limits: ServingLimits, unmetered: Callable[[str], bool] = lambda _path: False
    ) -> None:
        self.app = app
        self.limits = limits
        self.unmetered = unmetered
        self.requests = 0
        self.body_bytes = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Admit the request, or answer 503 without reading its body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metered = not self.unmetered(scope["path"])
        if metered and self.requests >= self.limits.max_concurrent_requests:
            await _send_json(send, 503, _busy("too many requests in progress"), close=False)
            return
        declared = _content_length(scope)
        budget = self.limits.max_body_bytes_in_flight
        # A body larger than the whole budget never fits: the route's own size limit answers it (413), not a
        # 503 that would have the client retry for ever.
        if declared is not None and declared <= budget and self.body_bytes + declared > budget:
            await _send_json(send, 503, _busy("too many upload bytes in flight"), close=False)
            return
        self.requests += int(metered)
        body = _MeteredBody(self, receive)
        response_started = False

        async def tracked_send(message: Any) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, tracked_send)
        except RequestTimeout:
            if not response_started:
                reason = "the request body did not arrive in time"
                await _send_json(send, 408, {"error": "request_timeout", "reason": reason}, close=True)
        except _InFlightExceeded:
            if not response_started:
                await _send_json(send, 503, _busy("too many upload bytes in flight"), close=True)
        except ClientDisconnect:
            # The client went away mid-body (a load generator stopping, a closed tab): nobody to answer.
            logger.debug("client disconnected during %s %s", scope["method"], scope["path"])
        finally:
            self.requests -= int(metered)
            body.release()


def _content_length(scope: Any) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _MeteredBody:
    """One request's `receive`: counts its body against the budget and times its arrival."""

    def __init__(self, guard: RequestGuard, receive: Any) -> None:
        self.guard = guard
        self.inner = receive
        self.received = 0
        self.done = False
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.started = loop.time()

    async def receive(self) -> Any:
        if self.done:
            return await self.inner()  # after the body: disconnect waits (event streams) are not timed
        limits = self.guard.limits
        now = self.loop.time()
        # The moment the average rate would fall below the minimum if nothing more arrived.
        rate_deadline = self.started + max(
            limits.body_idle_timeout_s, self.received / limits.body_min_rate_bps
        )
        timeout = min(limits.body_idle_timeout_s, rate_deadline - now)
        try:
            message = await asyncio.wait_for(self.inner(), timeout=max(0.0, timeout))
        except TimeoutError:
            logger.info("request body timed out after %d bytes", self.received)
            raise RequestTimeout from None
        if message["type"] != "http.request":
            self.done = True
            return message
        size = len(message.get("body", b""))
        if self.guard.body_bytes + size > limits.max_body_bytes_in_flight:
            raise _InFlightExceeded
        self.guard.body_bytes += size
        self.received += size
        self.done = not message.get("more_body", False)
        return message

    def release(self) -> None:
        self.guard.body_bytes -= self.received
        self.received = 0


def protocol_class(limits: ServingLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a timeout on request heads and a cap on connections."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, config: uvicorn.Config, server_state: ServerState, **kwargs: Any) -> None:
            super().__init__(config, server_state, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_started = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self.app = (
                    _too_many_connections  # this connection's first request is answered 503, then closed
                )
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_started = True
            if self._head_timer is None:
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            self._head_started = False
            super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered; the next head's timer starts with its first byte
            if self._head_started:
                self.transport.write(_HEAD_TIMEOUT_RESPONSE)
            self.transport.close()

    return GuardedHttpToolsProtocol


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _send_json(send, 503, _busy("too many open connections"), close=True)


def serve(
    app: Any,
    settings: WebSettings,
    host: str,
    port: int,
    graceful_shutdown_s: float,
) -> uvicorn.Server:
    """A uvicorn server for `app` with the service's limits; call `.run()` on it."""
    limits = ServingLimits.of(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits),
        log_config=None,  # keep the one logging set-up of configure_logging
        timeout_graceful_shutdown=max(1, round(graceful_shutdown_s)),
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout_s)),
        proxy_headers=False,
        # The listen queue holds connections the event loop has not accepted yet: a burst of clients waits
        # there instead of being refused.
        backlog=4096,
    )
    return uvicorn.Server(config)
