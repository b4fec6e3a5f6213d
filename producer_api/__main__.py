"""`python -m producer_api`: read the settings, log them, serve the upload API with uvicorn."""

from __future__ import annotations

import logging
import sys

from pipeline_core.serving import serve
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
    server = serve(
        create_app(settings), settings, settings.api_host, settings.api_port, settings.shutdown_timeout_s
    )
    server.run()
    # uvicorn returns (instead of raising) when the lifespan fails at start-up.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
