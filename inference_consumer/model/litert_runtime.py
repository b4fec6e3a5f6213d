"""A .tflite model run by LiteRT (ai-edge-litert), with the batch size resized on demand."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from inference_consumer.model.runtime import as_probabilities
from pipeline_core.errors import ModelLoadError


class LiteRTRuntime:
    """One LiteRT interpreter; predict() is serialised because an interpreter is not thread-safe."""

    name = "litert"

    def __init__(self, model_path: Path, num_threads: int) -> None:
        try:
            self._interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"{model_path}: LiteRT cannot load this model ({e})") from e
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"{model_path}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
            )
        self._input: dict[str, Any] = inputs[0]
        self._output: dict[str, Any] = outputs[0]
        in_shape, out_shape = self._input["shape_signature"], self._output["shape_signature"]
        if len(in_shape) != 4 or in_shape[3] != 3 or min(in_shape[1:3]) < 1 or len(out_shape) != 2:
            raise ModelLoadError(
                f"{model_path}: expected input N x H x W x 3 and output N x classes, "
                f"found {list(in_shape)} and {list(out_shape)}"
            )
        self.input_size = (int(in_shape[1]), int(in_shape[2]))
        self.num_classes = int(out_shape[1])
        # A fixed batch dimension cannot be resized safely, so such models run in chunks of that size.
        self._fixed_batch = int(in_shape[0]) if in_shape[0] > 0 else None
        self._batch = int(self._input["shape"][0])
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores for N preprocessed images, in one interpreter call when the batch size is dynamic."""
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        with self._lock:
            if self._fixed_batch is None:
                return as_probabilities(self._invoke(batch))
            return as_probabilities(
                np.concatenate(
                    [
                        self._invoke_padded(batch[i : i + self._fixed_batch])
                        for i in range(0, len(batch), self._fixed_batch)
                    ]
                )
            )

    def _invoke_padded(self, chunk: np.ndarray) -> np.ndarray:
        assert self._fixed_batch is not None
        missing = self._fixed_batch - len(chunk)
        padded = (
            np.concatenate([chunk, np.zeros((missing, *chunk.shape[1:]), chunk.dtype)]) if missing else chunk
        )
        return self._invoke(padded)[: len(chunk)]

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [len(batch), *self.input_size, 3])
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        self._interpreter.set_tensor(self._input["index"], _quantize(batch, self._input))
        self._interpreter.invoke()
        scores: np.ndarray = self._interpreter.get_tensor(self._output["index"])
        return _dequantize(scores, self._output)


def _quantize(batch: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Cast to the input's dtype, applying its quantisation (scale, zero point) for integer inputs."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(batch, dtype=dtype)
    scale, zero_point = detail["quantization"]
    values = batch / scale + zero_point if scale else batch
    info = np.iinfo(dtype)
    quantized: np.ndarray = np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return quantized


def _dequantize(scores: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if scores.dtype.kind == "f":
        return scores
    scale, zero_point = detail["quantization"]
    dequantized: np.ndarray = (scores.astype(np.float32) - zero_point) * (scale or 1.0)
    return dequantized
