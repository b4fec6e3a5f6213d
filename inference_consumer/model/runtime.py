"""What every runtime offers the classifier: an input size, a class count and batched prediction."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class ModelRuntime(Protocol):
    """A loaded model on one runtime; predict() takes N x H x W x 3 float32 and gives N x classes scores."""

    name: str
    input_size: tuple[int, int]  # (height, width)
    num_classes: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax the rows that are not already probabilities (a custom model may output logits)."""
    scores = scores.astype(np.float32, copy=False)
    logits = ((scores < -1e-6) | (scores > 1.0 + 1e-6)).any(axis=1)
    if not logits.any():
        return scores
    scores = scores.copy()
    shifted = scores[logits] - scores[logits].max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    scores[logits] = exp / exp.sum(axis=1, keepdims=True)
    return scores
