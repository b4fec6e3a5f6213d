"""Build or load the Keras model behind a ModelSource (imports Keras, so only imported when needed)."""

from __future__ import annotations

import logging

import keras

from inference_consumer.model.efficientnet_lite import VARIANTS, load_efficientnet_lite
from inference_consumer.model.sources import ModelSource
from pipeline_core.errors import ModelLoadError

logger = logging.getLogger(__name__)


def load_keras_model(source: ModelSource) -> keras.Model:
    """The Keras model for an EfficientNet-Lite state dict, ResNet50 weights file or .keras file."""
    if source.kind in VARIANTS:
        return load_efficientnet_lite(VARIANTS[source.kind], source.path)
    try:
        if source.kind == "resnet50":
            return keras.applications.ResNet50(weights=str(source.path))
        if source.kind == "keras":
            # safe_mode refuses to deserialise Python lambdas embedded in the file.
            return keras.saving.load_model(source.path, compile=False, safe_mode=True)
    except (ValueError, OSError, TypeError, KeyError) as e:
        raise ModelLoadError(f"{source.path}: cannot load {source.kind} model ({e})") from e
    raise ModelLoadError(f"{source.path}: a {source.kind} model is not a Keras model")
