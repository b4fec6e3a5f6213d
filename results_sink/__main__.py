"""`python -m results_sink`: store predictions from Kafka, serve them on SINK_HOST:SINK_PORT until SIGTERM."""

from __future__ import annotations

import logging
import sys
import threading

import uvicorn

from pipeline_core.serving import serve
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
    consumer_died = threading.Event()
    server: uvicorn.Server | None = None

    def on_consumer_death() -> None:
        # A sink that stores nothing must not look alive: stop serving, exit 1, let the supervisor restart it.
        consumer_died.set()
        if server is not None:
            server.should_exit = True

    server = serve(
        create_app(settings, on_fatal=on_consumer_death),
        settings,
        settings.sink_host,
        settings.sink_port,
        # Longer than the streams' own grace, so they end cooperatively before uvicorn cancels them.
        settings.uvicorn_graceful_shutdown_s,
    )
    server.run()
    if consumer_died.is_set():
        logger.error("exiting with status 1: the results consumer died")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
