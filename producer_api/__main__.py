"""`python -m producer_api`: read the settings, log them, serve the upload API with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from pipeline_core.startup import load_settings
from producer_api.app import create_app
from producer_api.settings import ApiSettings

logger = logging.getLogger("producer_api")


def main() -> int:
    """Serve until SIGTERM/SIGINT; exit 2 on invalid settings, 1 if start-up fails."""
    settings = load_settings(ApiSettings, "producer_api")
    if settings is None:
        return 2
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
