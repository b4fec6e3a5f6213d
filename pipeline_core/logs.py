"""Logging set-up, called once at each entry point."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr, one line each, with time, level and logger name."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    # kafka-python logs every connection attempt at INFO; its warnings and errors are what operators need.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
