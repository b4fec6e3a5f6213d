"""Entry points' start: invalid settings are named and refused; the development job-id secret is warned about."""

from __future__ import annotations

import logging

import pytest

from pipeline_core.settings import PipelineSettings, WebSettings
from pipeline_core.startup import load_settings


def test_invalid_settings_print_the_setting_and_give_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "0")
    assert load_settings(PipelineSettings, "some_service") is None
    err = capsys.readouterr().err
    assert "some_service: invalid settings" in err and "topic_partitions" in err


def test_the_development_secret_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("JOB_ID_SECRET", raising=False)
    monkeypatch.setattr("pipeline_core.startup.configure_logging", lambda level: None)
    with caplog.at_level(logging.INFO):
        settings = load_settings(WebSettings, "web_service")
    assert settings is not None
    assert any("JOB_ID_SECRET is the development default" in r.message for r in caplog.records)
    monkeypatch.setenv("JOB_ID_SECRET", "a-real-secret")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_settings(WebSettings, "web_service")
    assert not any("JOB_ID_SECRET" in r.message for r in caplog.records)
