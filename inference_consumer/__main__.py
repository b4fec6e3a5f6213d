"""`python -m inference_consumer`: load the model once, join the consumer group, classify until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from prometheus_client import start_http_server

from inference_consumer.model import load_classifier
from inference_consumer.settings import ConsumerSettings
from inference_consumer.worker import InferenceWorker
from pipeline_core.clients import wait_for_admin
from pipeline_core.errors import PipelineError
from pipeline_core.startup import load_settings
from pipeline_core.topics import ensure_topics, pipeline_topics

logger = logging.getLogger("inference_consumer")


def main() -> int:
    """Run one consumer-group member; exit 0 on a graceful stop, 1 on a configuration or broker error."""
    settings = load_settings(ConsumerSettings, "inference_consumer")
    if settings is None:
        return 2
    try:
        classifier = load_classifier(
            model=settings.model_name,
            runtime=settings.model_runtime,
            model_path=settings.model_path,
            labels_path=settings.model_labels_path,
            preprocessing=settings.model_preprocessing,
            cache_dir=settings.model_cache_dir,
            num_threads=settings.model_threads,
        )
        admin = wait_for_admin(settings, "inference")
        try:
            ensure_topics(admin, pipeline_topics(settings))
        finally:
            admin.close()
    except PipelineError as e:
        logger.error("cannot start: %s", e)
        return 1
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    worker = InferenceWorker(settings, classifier)
    _install_signal_handlers(worker, settings.shutdown_grace_s)
    worker.run()
    return 0


def _install_signal_handlers(worker: InferenceWorker, grace_s: float) -> None:
    """First SIGTERM/SIGINT: finish the batch in hand, commit, leave. Second, or grace over: exit now."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if worker_stopping.is_set():
            logger.warning(
                "second %s: exiting now; the uncommitted batch will be re-delivered",
                signal.Signals(signum).name,
            )
            os._exit(130)
        worker_stopping.set()
        logger.info("%s: finishing the batch in hand, then leaving the group", signal.Signals(signum).name)
        worker.stop()
        watchdog = threading.Timer(grace_s, _force_exit, args=(grace_s,))
        watchdog.daemon = True
        watchdog.start()

    worker_stopping = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _force_exit(grace_s: float) -> None:
    logger.error(
        "still busy %.0f s after the stop request; exiting; uncommitted work will be re-delivered", grace_s
    )
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
