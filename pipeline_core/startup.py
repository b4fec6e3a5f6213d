"""What every entry point does first: read its settings, set up logging, and say what it runs with."""

from __future__ import annotations

import logging
import sys
from typing import TypeVar

from pydantic import ValidationError

from pipeline_core.logs import configure_logging
from pipeline_core.settings import DEV_JOB_ID_SECRET, PipelineSettings, WebSettings
from pipeline_core.tracing import configure_tracing

SettingsT = TypeVar("SettingsT", bound=PipelineSettings)


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, without the value given: it may be a secret (a short API_KEY, a URL's password)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def load_settings(cls: type[SettingsT], service: str) -> SettingsT | None:
    """Settings from the environment, logging and tracing configured and the effective values logged (secrets
    masked); None, after printing which settings are wrong, when they do not validate (the caller exits 2)."""
    try:
        settings = cls()
    except ValidationError as e:
        print(f"{service}: invalid settings:\n{describe_errors(e)}", file=sys.stderr)
        return None
    configure_logging(settings.log_level)
    logger = logging.getLogger(service)
    logger.info("settings: %s", settings.public_dict())
    configure_tracing(settings, service)
    if isinstance(settings, WebSettings) and settings.job_id_secret.get_secret_value() == DEV_JOB_ID_SECRET:
        logger.warning(
            "JOB_ID_SECRET is the development default: anyone can forge job ids; set your own, the same on "
            "the API and the sink"
        )
    return settings
