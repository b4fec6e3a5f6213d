"""load_classifier: pick the model source, runtime, labels and preprocessing, and put them together."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

from inference_consumer.model.classifier import ImageClassifier
from inference_consumer.model.labels import Labels, imagenet_labels, read_labels_file
from inference_consumer.model.litert_runtime import LiteRTRuntime
from inference_consumer.model.preprocessing import (
    EFFICIENTNET_LITE0_SPEC,
    EFFICIENTNET_LITE1_SPEC,
    EFFICIENTNET_LITE2_SPEC,
    RESNET50_SPEC,
    ImageSpec,
    validate_scaling,
)
from inference_consumer.model.runtime import ModelRuntime
from inference_consumer.model.sources import EFFICIENTNET_LITE_WEIGHTS, ModelSource, resolve_source
from inference_consumer.model.tflite_cache import cached_tflite_path, convert_into_cache, ensure_tflite
from inference_consumer.model.weights import read_state_dict
from pipeline_core.errors import ConfigurationError, ModelLoadError

logger = logging.getLogger(__name__)

RuntimeName = Literal["litert", "tensorflow"]
_BUILTIN_SPECS = {
    "efficientnet-lite0": EFFICIENTNET_LITE0_SPEC,
    "efficientnet-lite1": EFFICIENTNET_LITE1_SPEC,
    "efficientnet-lite2": EFFICIENTNET_LITE2_SPEC,
    "resnet50": RESNET50_SPEC,
}


def load_classifier(
    *,
    model: str = "efficientnet-lite0",
    runtime: RuntimeName = "litert",
    model_path: Path | None = None,
    labels_path: Path | None = None,
    preprocessing: str | None = None,
    cache_dir: Path,
    num_threads: int = 2,
) -> ImageClassifier:
    """Load a model (efficientnet-lite0/1/2, resnet50, or "custom") on LiteRT or TensorFlow."""
    started = time.perf_counter()
    if runtime not in ("litert", "tensorflow"):
        raise ConfigurationError(f"unknown runtime {runtime!r}; choose litert or tensorflow")
    if num_threads < 1:
        raise ConfigurationError(f"num_threads must be at least 1, got {num_threads}")
    source = resolve_source(model, model_path)
    labels = _labels(source, labels_path)
    if source.kind == "tflite" and runtime != "litert":
        logger.info("%s is a .tflite file, so it runs on LiteRT", source.path)
    engine = (
        _litert(source, cache_dir, num_threads)
        if runtime == "litert" or source.kind == "tflite"
        else _tensorflow(source, num_threads)
    )
    classifier = ImageClassifier(
        model_name=source.name,
        model_version=source.version,
        runtime=engine,
        labels=labels,
        spec=_image_spec(source, engine, preprocessing),
    )
    logger.info(
        "loaded model %s version %s on %s in %.2f s",
        classifier.model_name,
        classifier.model_version,
        classifier.runtime,
        time.perf_counter() - started,
    )
    return classifier


def _labels(source: ModelSource, labels_path: Path | None) -> Labels:
    if source.kind in _BUILTIN_SPECS:
        if labels_path is not None:
            logger.warning(
                "ignoring labels path %s: %s uses the ImageNet-1k labels", labels_path, source.name
            )
        return imagenet_labels()
    if labels_path is None:
        raise ConfigurationError(f"custom model {source.path} needs a labels file (MODEL_LABELS_PATH)")
    return read_labels_file(labels_path)


def _litert(source: ModelSource, cache_dir: Path, num_threads: int) -> ModelRuntime:
    if source.kind == "tflite":
        return LiteRTRuntime(source.path, num_threads)
    path, converted = (
        ensure_tflite(source, cache_dir)
        if source.kind not in EFFICIENTNET_LITE_WEIGHTS
        else _ensure_efficientnet_tflite(source, cache_dir)
    )
    try:
        return LiteRTRuntime(path, num_threads)
    except ModelLoadError:
        if converted:
            raise
        # A cached file that does not load (disk trouble, an older LiteRT) is rebuilt once, not trusted.
        logger.warning("cached %s does not load; converting again", path, exc_info=True)
        convert_into_cache(source, path)
        return LiteRTRuntime(path, num_threads)


def _ensure_efficientnet_tflite(source: ModelSource, cache_dir: Path) -> tuple[Path, bool]:
    if not cached_tflite_path(source, cache_dir).is_file():
        # Read the weights here first (0.1 s, no TensorFlow) so a bad file fails with its cause chained.
        read_state_dict(source.path)
    return ensure_tflite(source, cache_dir)


def _tensorflow(source: ModelSource, num_threads: int) -> ModelRuntime:
    # Imported here so that LiteRT-only processes never load TensorFlow (seconds and ~600 MB).
    from inference_consumer.model.tf_runtime import TensorFlowRuntime

    return TensorFlowRuntime.load(source, num_threads)


def _image_spec(source: ModelSource, engine: ModelRuntime, preprocessing: str | None) -> ImageSpec:
    builtin = _BUILTIN_SPECS.get(source.kind)
    if builtin is not None:
        if preprocessing not in (None, builtin.scaling):
            raise ConfigurationError(
                f"{source.name} needs preprocessing {builtin.scaling!r}, not {preprocessing!r}"
            )
        return builtin
    if preprocessing is None:
        logger.warning(
            "no preprocessing set for %s; assuming raw 0..255 pixels (MODEL_PREPROCESSING)", source.path
        )
    try:
        scaling = validate_scaling(preprocessing or "raw")
    except ValueError as e:
        raise ConfigurationError(str(e)) from e
    height, width = engine.input_size
    return ImageSpec(width, height, scaling)
