"""The classifier the consumer holds: bytes in, top-k labels out, one model call per batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference_consumer.model.labels import Labels
from inference_consumer.model.preprocessing import ImageSpec, preprocess
from inference_consumer.model.runtime import ModelRuntime
from pipeline_core.errors import ImageDecodeError, ModelLoadError
from pipeline_core.events import bounded

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScoredLabel:
    """One class and its probability."""

    label: str
    wnid: str | None
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Classification:
    """The top-k classes for one image, best first."""

    top: tuple[ScoredLabel, ...]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One model call's results, in input order, and where its time went."""

    results: list[Classification | ImageDecodeError]
    preprocess_s: float
    inference_s: float


class ImageClassifier:
    """A loaded model with its labels and preprocessing."""

    def __init__(
        self, *, model_name: str, model_version: str, runtime: ModelRuntime, labels: Labels, spec: ImageSpec
    ) -> None:
        if len(labels) != runtime.num_classes:
            raise ModelLoadError(
                f"model {model_name} has {runtime.num_classes} outputs "
                f"but the labels list {len(labels)} classes"
            )
        self.model_name = model_name
        self.model_version = model_version
        self.runtime = runtime.name
        self.labels = labels
        self.spec = spec
        self._runtime = runtime

    def __repr__(self) -> str:
        return (
            f"ImageClassifier({self.model_name!r}, version={self.model_version!r}, runtime={self.runtime!r})"
        )

    def preprocess(self, data: bytes) -> np.ndarray:
        """One encoded image to a height x width x 3 float32 array ready for the model."""
        return preprocess(data, self.spec)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """N preprocessed images to N x classes probabilities."""
        return self._runtime.predict(batch)

    def classify(self, images: Sequence[bytes], top_k: int = 5) -> list[Classification | ImageDecodeError]:
        """Top-k labels per image; an undecodable image gets its ImageDecodeError in its slot."""
        return self.classify_batch(images, top_k).results

    def classify_batch(self, images: Sequence[bytes], top_k: int = 5) -> BatchResult:
        """`classify`, with the seconds spent preprocessing and in the model call, for the result's timings."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        started = time.perf_counter()
        results: list[Classification | ImageDecodeError | None] = [None] * len(images)
        arrays: list[np.ndarray] = []
        slots: list[int] = []
        for slot, data in enumerate(images):
            try:
                arrays.append(self.preprocess(data))
                slots.append(slot)
            except ImageDecodeError as e:
                results[slot] = e
            except Exception as e:  # a decoder bug on odd bytes fails that image alone, never its batch
                logger.warning("preprocessing raised %s on image %d of the batch", type(e).__name__, slot)
                results[slot] = ImageDecodeError(
                    f"preprocessing failed: {bounded(f'{type(e).__name__}: {e}')}"
                )
        preprocessed = time.perf_counter()
        if arrays:
            for slot, classification in zip(
                slots, self._top(self.predict(np.stack(arrays)), top_k), strict=True
            ):
                results[slot] = classification
        done = [r for r in results if r is not None]  # every slot is filled by now
        return BatchResult(done, preprocessed - started, time.perf_counter() - preprocessed)

    def _top(self, scores: np.ndarray, top_k: int) -> list[Classification]:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        names, wnids = self.labels.names, self.labels.wnids
        return [
            Classification(tuple(ScoredLabel(names[i], wnids[i], int(i), float(row[i])) for i in indices))
            for row, indices in zip(scores, order, strict=True)
        ]
