"""Fixtures for the model tests: real photos as bytes, and each runtime loaded once per session."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

from inference_consumer.model import ImageClassifier, load_classifier
from inference_consumer.model.sources import default_weights_path


def encode(pixels: np.ndarray | Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """Encode an array or Pillow image to bytes in the given format."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photo_pixels() -> dict[str, np.ndarray]:
    """Real photos that ship with scikit-image and scikit-learn, as RGB arrays."""
    china, flower = load_sample_images().images
    return {
        "chelsea": skimage.data.chelsea(),  # type: ignore[no-untyped-call]
        "coffee": skimage.data.coffee(),  # type: ignore[no-untyped-call]
        "china": china,
        "flower": flower,
    }


@pytest.fixture(scope="session")
def photos(photo_pixels: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The photos as JPEG (chelsea, china) and PNG (coffee, flower) bytes."""
    return {
        name: encode(pixels, "PNG" if name in ("coffee", "flower") else "JPEG", quality=92)
        for name, pixels in photo_pixels.items()
    }


@pytest.fixture(scope="session")
def weights_path() -> Path:
    return default_weights_path()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def litert_classifier(model_cache_dir: Path) -> ImageClassifier:
    """The default model on LiteRT, converted into a fresh cache (a child process runs the conversion)."""
    return load_classifier(runtime="litert", cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tf_classifier(model_cache_dir: Path) -> ImageClassifier:
    """The default model on TensorFlow, built once per session."""
    return load_classifier(runtime="tensorflow", cache_dir=model_cache_dir)
