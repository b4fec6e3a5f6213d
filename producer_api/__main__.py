"""`python -m producer_api`: read the settings, log them, serve the upload API with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from pipeline_core.logs import configure_logging
from pipeline_core.settings import DEV_JOB_ID_SECRET
from producer_api.app import create_app
from producer_api.settings import ApiSettings

logger = logging.getLogger("producer_api")


def main() -> int:
    """Serve until SIGTERM/SIGINT; exit 2 on invalid settings, 1 if start-up fails."""
    try:
        settings = ApiSettings()
    except ValidationError as e:
        print(f"producer_api: invalid settings:\n{e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    logger.info("settings: %s", settings.public_dict())
    if settings.job_id_secret.get_secret_value() == DEV_JOB_ID_SECRET:
        logger.warning("JOB_ID_SECRET is the development default; set your own (the same on API and sink)")
    if settings.api_key is None:
        logger.warning("API_KEY is not set: anyone who reaches this port can upload")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the one logging set-up of configure_logging
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns (instead of raising) when the lifespan fails at start-up.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
