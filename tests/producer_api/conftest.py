"""Fixtures for the upload API: settings on the test's own topics, the app with its lifespan, a reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_helpers import AppClient, TopicReader, closed_port

from pipeline_core.settings import PipelineSettings
from producer_api.app import create_app
from producer_api.settings import ApiSettings

ApiSettingsFactory = Callable[..., ApiSettings]


@pytest.fixture
def api_settings_factory(pipeline_settings: PipelineSettings) -> ApiSettingsFactory:
    """ApiSettings on this test's topics, with overrides."""

    def make(**overrides: Any) -> ApiSettings:
        base = pipeline_settings.model_dump() | {"broker_startup_wait_s": 30.0}
        return ApiSettings(**(base | overrides), _env_file=None)  # type: ignore[call-arg]

    return make


@pytest.fixture
def api_settings(api_settings_factory: ApiSettingsFactory) -> ApiSettings:
    """ApiSettings on this test's topics."""
    return api_settings_factory()


@pytest.fixture
def client(api_settings: ApiSettings) -> Iterator[AppClient]:
    """The app, started (lifespan run, connected to the broker) and stopped around the test."""
    with AppClient(create_app(api_settings)) as test_client:
        yield test_client


@pytest.fixture
def reader(pipeline_settings: PipelineSettings) -> Iterator[TopicReader]:
    """A TopicReader on this test's topics."""
    topic_reader = TopicReader(pipeline_settings)
    yield topic_reader
    topic_reader.consumer.close()


@pytest.fixture
def unused_port() -> int:
    """A local port nobody listens on."""
    return closed_port()
