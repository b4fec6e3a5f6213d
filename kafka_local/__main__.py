"""`python -m kafka_local [--fetch-only]`: fetch the broker's jars, or run a broker until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
from pathlib import Path

from kafka_local.broker import LocalBroker, ensure_jars
from pipeline_core.errors import PipelineError
from pipeline_core.logs import configure_logging

logger = logging.getLogger("kafka_local")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fetch-only", action="store_true", help="resolve the jars into the cache and exit")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=9093)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    configure_logging()
    try:
        if args.fetch_only:
            print(ensure_jars())
            return 0
        data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="kafka-"))
        with LocalBroker(data_dir, args.port, args.controller_port) as broker:
            logger.info("broker at %s; Ctrl-C stops it", broker.bootstrap_servers)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except PipelineError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    raise SystemExit(main())
