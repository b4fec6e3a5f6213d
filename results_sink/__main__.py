"""`python -m results_sink`: store predictions from Kafka, serve them on SINK_HOST:SINK_PORT until SIGTERM."""

from __future__ import annotations

import logging
import sys

import uvicorn

from pipeline_core.startup import load_settings
from results_sink.app import create_app
from results_sink.settings import SinkSettings

logger = logging.getLogger("results_sink")


def main() -> int:
    """Run the sink; exit 0 after a graceful stop, 2 on invalid settings."""
    settings = load_settings(SinkSettings, "results_sink")
    if settings is None:
        return 2
    if settings.api_key is None and settings.sink_host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without API_KEY: anyone can read results", settings.sink_host)
    uvicorn.run(
        create_app(settings),
        host=settings.sink_host,
        port=settings.sink_port,
        log_config=None,  # keep the one log format configure_logging set up
        # Longer than the streams' own grace, so they end cooperatively before uvicorn cancels them.
        timeout_graceful_shutdown=int(settings.uvicorn_graceful_shutdown_s),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
