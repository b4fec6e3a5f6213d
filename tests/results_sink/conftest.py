"""Fixtures for the sink: settings on the test's own topics, a real uvicorn server, a Kafka producer, and a
PostgreSQL server (POSTGRES_URL, else a throwaway one) with a fresh database per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer
from sink_helpers import SECRET, SinkServer

from kafka_local.postgres import PostgresBinariesMissingError, fresh_database, provide_postgres
from pipeline_core.clients import create_producer
from pipeline_core.events import PredictionEvent, encode_prediction
from pipeline_core.jobs import new_job_id
from pipeline_core.settings import PipelineSettings
from results_sink.settings import SinkSettings


@pytest.fixture
def sink_settings(pipeline_settings: PipelineSettings, tmp_path: Path) -> Callable[..., SinkSettings]:
    """Sink settings on this test's topics and groups, storing in tmp_path; keyword overrides win."""

    def make(**overrides: Any) -> SinkSettings:
        values: dict[str, Any] = pipeline_settings.model_dump() | {
            "results_store_url": f"sqlite:///{tmp_path}/results.db",
            "job_id_secret": SECRET,
            "api_key": None,
            "cors_origins": ["http://localhost:8000"],
            "sse_ping_interval_s": 1.0,
        }
        return SinkSettings(**(values | overrides), _env_file=None)

    return make


@pytest.fixture
def start_sink(sink_settings: Callable[..., SinkSettings]) -> Iterator[Callable[..., SinkServer]]:
    """Start a sink with these setting overrides, ready (consumer in its group); stopped after the test."""
    servers: list[SinkServer] = []

    def start(**overrides: Any) -> SinkServer:
        server = SinkServer(sink_settings(**overrides))
        server.start()
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sink(start_sink: Callable[..., SinkServer]) -> SinkServer:
    """A sink with the default test settings."""
    return start_sink()


@pytest.fixture
def client(sink: SinkServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sink.url, timeout=30) as http:
        yield http


@pytest.fixture
def producer(pipeline_settings: PipelineSettings) -> Iterator[KafkaProducer]:
    kafka = create_producer(pipeline_settings, "tests")
    yield kafka
    kafka.close(timeout=10)


@pytest.fixture
def publish(producer: KafkaProducer, pipeline_settings: PipelineSettings) -> Callable[..., None]:
    """Publish prediction events to the test's predictions topic and wait for the broker's acks."""

    def send(*events: PredictionEvent) -> None:
        futures = []
        for event in events:
            key, value, headers = encode_prediction(event)
            topic = pipeline_settings.topic_predictions
            futures.append(producer.send(topic, key=key, value=value, headers=headers))
        for future in futures:
            future.get(timeout=10)

    return send


@pytest.fixture
def job_id() -> Callable[[], str]:
    """A fresh job id signed with the tests' secret."""
    return lambda: new_job_id(SECRET.encode())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases on; fails (never skips) without one."""
    try:
        with provide_postgres() as url:
            yield url
    except PostgresBinariesMissingError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for this test only (NOTIFY channels are per database too)."""
    with fresh_database(postgres_server) as url:
        yield url
