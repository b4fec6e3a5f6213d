"""`python -m inference_consumer`: load the model once, join the consumer group, classify until SIGTERM."""

from __future__ import annotations

import logging
import os
import sys

from PIL import Image
from prometheus_client import start_http_server

from inference_consumer import metrics
from inference_consumer.model import load_classifier
from inference_consumer.settings import ConsumerSettings
from inference_consumer.worker import InferenceWorker
from pipeline_core.clients import wait_for_admin
from pipeline_core.errors import PipelineError
from pipeline_core.runtime import describe, install_stop_signals
from pipeline_core.startup import load_settings
from pipeline_core.topics import ensure_topics, pipeline_topics

logger = logging.getLogger("inference_consumer")


def main() -> int:
    """Run one consumer-group member: exit 0 on a graceful stop, 1 when it cannot start or its loop died."""
    settings = load_settings(ConsumerSettings, "inference_consumer")
    if settings is None:
        return 2
    # The API refuses larger images; a record written by another producer meets the same cap here.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    if settings.inference_role == "shadow" and settings.shadow_nice:
        # The shadow must never slow the primary: on shared cores the scheduler serves the primary first.
        logger.info("shadow role: CPU priority lowered to nice %d", os.nice(settings.shadow_nice))
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
    worker = InferenceWorker(settings, classifier)
    metrics.READY.set_function(lambda: 0.0 if worker.runtime.not_ready_reason() else 1.0)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    install_stop_signals(worker.runtime, settings.shutdown_grace_s)
    try:
        worker.run()
    except Exception as e:
        # Never a live process doing nothing: exit non-zero, so that the supervisor (make run, compose) restarts it.
        logger.critical("consumer loop died: %s", describe(e), exc_info=not isinstance(e, PipelineError))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
