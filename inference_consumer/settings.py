"""Settings of an inference consumer: the model it serves and how it batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline_core.settings import PipelineSettings

DEFAULT_MODEL_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kafka-image-classifier" / "models"
)


ModelName = Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50", "custom"]


class ConsumerSettings(PipelineSettings):
    """One inference consumer instance. Run several with the same group to share the partitions."""

    model_name: ModelName = "efficientnet-lite0"
    model_runtime: Literal["litert", "tensorflow"] = "litert"
    model_path: Path | None = Field(
        None, description="A .keras, SavedModel or .tflite file (MODEL_NAME=custom)."
    )
    model_labels_path: Path | None = Field(None, description="One label per line, for MODEL_NAME=custom.")
    model_preprocessing: Literal["efficientnet-lite", "raw", "unit", "caffe"] | None = None
    model_cache_dir: Path = Field(
        DEFAULT_MODEL_CACHE, description="Where converted .tflite files are cached."
    )
    model_threads: int = Field(2, ge=1, le=64, description="Threads the model runtime may use.")
    top_k: int = Field(5, ge=1, le=20, description="How many of the best classes each result lists.")

    batch_max_size: int = Field(
        4,
        ge=1,
        le=512,
        description="Most images one poll returns and one model call classifies. LiteRT spends ~10% more CPU "
        "per image at batch 16 than at 4 here (docs/benchmarks/pipeline.md), and small batches keep latency low.",
    )
    poll_max_images: int = Field(
        4,
        ge=1,
        le=512,
        description="Most images one poll takes and one checkpoint covers (with exactly-once, one transaction); "
        "they are classified in model calls of up to BATCH_MAX_SIZE (never fewer than that). More per poll means "
        "fewer transactions per image: 16 against 4 gave 14-19% more saturated throughput and less broker CPU "
        "per image, but a higher p99 at half load in one of two rounds (docs/benchmarks.md, 2026-12-03), so the "
        "default stays one model call per checkpoint and 16 is the setting for throughput.",
    )
    batch_max_wait_ms: int = Field(
        500,
        ge=0,
        le=10_000,
        description="How long a poll waits when no image is ready (it returns as soon as one is). Each empty poll "
        "costs ~1 ms of CPU in kafka-python: at 20 ms an idle consumer used 6% of a core, at 500 ms under 1%. "
        "A stop request is noticed within this time.",
    )
    shutdown_grace_s: float = Field(15.0, gt=0, description="How long SIGTERM waits for the batch in hand.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Serve /metrics on this port; 0 turns it off.")
    metrics_host: str = Field("127.0.0.1", description="Address /metrics binds to (0.0.0.0 in a container).")
    inference_role: Literal["primary", "shadow"] = Field(
        "primary",
        description="primary answers the clients (CONSUMER_GROUP_INFERENCE, TOPIC_PREDICTIONS); shadow is a "
        "candidate model that reads the same images in a group of its own (CONSUMER_GROUP_SHADOW) and writes "
        "to TOPIC_PREDICTIONS_SHADOW, which the sink only stores and compares (docs/model.md, rollout).",
    )
    shadow_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="A shadow consumer lowers its CPU priority by this much at start, so that on a busy machine "
        "the primary's consumers get the cores first and the shadow falls behind instead.",
    )

    @property
    def group_id(self) -> str:
        """The consumer group this role reads the images in."""
        return (
            self.consumer_group_shadow if self.inference_role == "shadow" else self.consumer_group_inference
        )

    @property
    def predictions_topic(self) -> str:
        """Where this role's results go."""
        return self.topic_predictions_shadow if self.inference_role == "shadow" else self.topic_predictions

    @property
    def dead_letter_topic(self) -> str:
        """Where this role's unprocessable images go."""
        return self.topic_dead_letter_shadow if self.inference_role == "shadow" else self.topic_dead_letter
