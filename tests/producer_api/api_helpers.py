"""Helpers of the upload API tests: images, raw multipart bodies, an in-process client, a topic reader."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

import httpx
from anyio.from_thread import start_blocking_portal
from fastapi import FastAPI
from kafka import TopicPartition
from PIL import Image

from pipeline_core.clients import create_consumer
from pipeline_core.settings import PipelineSettings
from producer_api.settings import ApiSettings

ApiSettingsFactory = Callable[..., ApiSettings]


def make_image(fmt: str = "PNG", size: tuple[int, int] = (64, 48), colour: str = "teal") -> bytes:
    """A real image file's bytes, made with Pillow."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def raw_multipart(
    parts: list[tuple[str, bytes, bytes]], boundary: str = "b0undary"
) -> tuple[bytes, dict[str, str]]:
    """A multipart body built by hand, so file names reach the server byte for byte (httpx escapes them)."""
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b'\r\nContent-Disposition: form-data; name="'
            + name.encode()
            + b'"; filename="'
            + filename
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + data
            + b"\r\n"
            for name, filename, data in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def closed_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppClient:
    """A synchronous client that runs the app and its lifespan on an event loop in another thread.

    What Starlette's TestClient does; Starlette 1.x deprecates TestClient over httpx (warnings are errors),
    so this drives the app through httpx's ASGI transport instead.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._stack = ExitStack()

    def __enter__(self) -> AppClient:
        portal = self._stack.enter_context(start_blocking_portal())
        self._stack.enter_context(
            portal.wrap_async_context_manager(self.app.router.lifespan_context(self.app))
        )
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://testserver"
        )
        self._stack.callback(portal.call, self.http.aclose)
        self.portal = portal
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request through the app."""
        return self.portal.call(partial(self.http.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """POST."""
        return self.request("POST", url, **kwargs)


class TopicReader:
    """Reads a topic from the beginning; closes its consumer."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.consumer = create_consumer(settings, "tests", group_id=None)

    def read(self, topic: str, expected: int, timeout_s: float = 20.0) -> list[Any]:
        """At least `expected` records of `topic`, or what arrived by the deadline."""
        partitions = [
            TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                records += batch
        return records

    def count(self, topic: str) -> int:
        """How many records the topic holds (sum of its end offsets)."""
        partitions = [
            TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        return sum(self.consumer.end_offsets(partitions).values())
