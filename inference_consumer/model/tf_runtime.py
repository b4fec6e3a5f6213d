"""A model run by TensorFlow through one traced tf.function (model.predict per batch is much slower)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from inference_consumer.model.keras_models import load_keras_model
from inference_consumer.model.runtime import as_probabilities
from inference_consumer.model.sources import ModelSource
from pipeline_core.errors import ModelLoadError

logger = logging.getLogger(__name__)


class TensorFlowRuntime:
    """A TensorFlow callable taking N x H x W x 3 float32."""

    name = "tensorflow"

    def __init__(
        self,
        function: Callable[[tf.Tensor], tf.Tensor],
        input_size: tuple[int, int],
        num_classes: int,
        keep_alive: object = None,
    ) -> None:
        self.input_size = input_size
        self.num_classes = num_classes
        self._function = function
        self._keep_alive = keep_alive  # the model or SavedModel owning the variables the function reads
        self._lock = threading.Lock()

    @classmethod
    def load(cls, source: ModelSource, num_threads: int) -> TensorFlowRuntime:
        """Load a source on TensorFlow: Keras models are traced, SavedModels use their serving signature."""
        _set_threads(num_threads)
        if source.kind == "saved_model":
            return cls._from_saved_model(source)
        return cls.from_keras(load_keras_model(source), str(source.path))

    @classmethod
    def from_keras(cls, model: Any, origin: str) -> TensorFlowRuntime:
        """Wrap a Keras model; one trace serves every batch size."""
        height, width = _image_shape(tuple(model.input_shape), origin)
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        return cls(
            function, (height, width), _class_count(tuple(model.output_shape), origin), keep_alive=model
        )

    @classmethod
    def _from_saved_model(cls, source: ModelSource) -> TensorFlowRuntime:
        try:
            loaded = tf.saved_model.load(str(source.path))
            signature = loaded.signatures["serving_default"]
        except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
            raise ModelLoadError(
                f"{source.path}: not a loadable SavedModel with a serving_default signature"
            ) from e
        specs = signature.structured_input_signature[1]
        if len(specs) != 1 or len(signature.structured_outputs) != 1:
            raise ModelLoadError(f"{source.path}: the serving signature must have one input and one output")
        (input_name, spec), (output_spec,) = next(iter(specs.items())), signature.structured_outputs.values()
        height, width = _image_shape(tuple(spec.shape), str(source.path))

        def function(x: tf.Tensor) -> tf.Tensor:
            return next(iter(signature(**{input_name: x}).values()))

        return cls(
            function, (height, width), _class_count(tuple(output_spec.shape), str(source.path)), loaded
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores for N preprocessed images in one call."""
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        with self._lock:
            scores = self._function(tf.convert_to_tensor(batch, tf.float32))
        return as_probabilities(np.asarray(scores))


def _image_shape(shape: tuple[Any, ...], origin: str) -> tuple[int, int]:
    if len(shape) != 4 or shape[3] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:3]):
        raise ModelLoadError(f"{origin}: model input must be N x H x W x 3 with a fixed size, got {shape}")
    return int(shape[1]), int(shape[2])


def _class_count(shape: tuple[Any, ...], origin: str) -> int:
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise ModelLoadError(f"{origin}: model output must be N x classes, got {shape}")
    return int(shape[1])


def _set_threads(num_threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    except RuntimeError:
        # TensorFlow fixes its thread pools at first use; a second model in the process keeps them.
        logger.debug("TensorFlow thread pools already initialised; keeping them")
