"""Serving your own model: .keras, .tflite and SavedModel with a labels file; ResNet50's missing weights."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import h5py  # type: ignore[import-untyped]
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from inference_consumer.model import Classification, ImageClassifier, load_classifier
from inference_consumer.model.loader import RuntimeName
from inference_consumer.model.sources import RESNET50_WEIGHTS_FILE
from pipeline_core.errors import ConfigurationError, ModelLoadError

LABELS = ["red", "green", "blue"]


def _tiny_model(seed: int) -> object:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 32x32, 3-class Keras model saved as .keras, as .tflite and as a SavedModel, plus labels files."""
    root = tmp_path_factory.mktemp("tiny")
    model = _tiny_model(seed=1)
    model.save(root / "tiny.keras")  # type: ignore[attr-defined]
    model.export(root / "saved", verbose=False)  # type: ignore[attr-defined]
    (root / "tiny.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    _tiny_model(seed=2).save(root / "other.keras")  # type: ignore[attr-defined]
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (root / "labels.json").write_text(json.dumps(LABELS))
    (root / "two.txt").write_text("red\ngreen\n")
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def squares() -> list[bytes]:
    out = []
    for colour in ((250, 10, 10), (10, 250, 10), (10, 10, 250)):
        buffer = io.BytesIO()
        Image.new("RGB", (50, 40), colour).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def _load(
    tiny: dict[str, Path],
    model: str,
    cache: Path,
    runtime: RuntimeName = "litert",
    labels: str = "labels.txt",
) -> ImageClassifier:
    return load_classifier(
        model="custom",
        model_path=tiny[model],
        labels_path=tiny[labels],
        preprocessing="unit",
        runtime=runtime,
        cache_dir=cache,
    )


def test_custom_models_on_every_runtime_agree(
    tiny: dict[str, Path], squares: list[bytes], tmp_path: Path
) -> None:
    loaded = [
        _load(tiny, "tiny.keras", tmp_path, "tensorflow"),
        _load(tiny, "tiny.keras", tmp_path),
        _load(tiny, "tiny.tflite", tmp_path, "tensorflow", labels="labels.json"),
        _load(tiny, "saved", tmp_path, "tensorflow"),
        _load(tiny, "saved", tmp_path),
    ]
    assert [c.runtime for c in loaded] == ["tensorflow", "litert", "litert", "tensorflow", "litert"]
    assert loaded[0].model_name == "custom:tiny.keras"
    assert len(loaded[0].model_version) == 12
    batch = np.stack([loaded[0].preprocess(data) for data in squares])
    assert batch.shape == (3, 32, 32, 3)
    assert batch.max() <= 1.0
    reference = loaded[0].predict(batch)
    assert reference.shape == (3, 3)
    for classifier in loaded[1:]:
        np.testing.assert_allclose(classifier.predict(batch), reference, atol=1e-5)
    result = loaded[1].classify(squares, top_k=2)[0]
    assert isinstance(result, Classification)
    assert len(result.top) == 2
    assert {s.label for s in result.top} <= set(LABELS)
    assert result.top[0].wnid is None


def test_each_model_file_gets_its_own_cached_tflite(
    tiny: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, other = _load(tiny, "tiny.keras", tmp_path), _load(tiny, "other.keras", tmp_path)
    assert first.model_version != other.model_version
    assert len(list(tmp_path.glob("keras-*.tflite"))) == 2
    with caplog.at_level(logging.INFO, logger="inference_consumer.model"):
        _load(tiny, "tiny.keras", tmp_path)
    assert not any(r.getMessage().startswith("converting") for r in caplog.records)


def test_labels_are_required(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="labels file"):
        load_classifier(model="custom", model_path=tiny["tiny.tflite"], cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_classifier(
            model="custom",
            model_path=tiny["tiny.tflite"],
            labels_path=tmp_path / "none.txt",
            cache_dir=tmp_path,
        )


def test_label_count_must_match_the_outputs(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="3 outputs but the labels list 2"):
        _load(tiny, "tiny.tflite", tmp_path, labels="two.txt")


def test_custom_needs_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="model path"):
        load_classifier(model="custom", cache_dir=tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"\.keras file, a \.tflite file or a SavedModel"):
        load_classifier(
            model="custom", model_path=tmp_path / "model.onnx", labels_path=tmp_path, cache_dir=tmp_path
        )


def test_corrupt_tflite_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tiny["tiny.tflite"].read_bytes()[:200])
    with pytest.raises(ModelLoadError, match=r"broken\.tflite"):
        load_classifier(model="custom", model_path=broken, labels_path=tiny["labels.txt"], cache_dir=tmp_path)


def test_resnet50_without_weights_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(ModelLoadError) as caught:
        load_classifier(model="resnet50", cache_dir=tmp_path)
    message = str(caught.value)
    assert RESNET50_WEIGHTS_FILE in message
    assert str(tmp_path / "keras" / "models") in message
    with pytest.raises(ModelLoadError, match=RESNET50_WEIGHTS_FILE):
        load_classifier(model="resnet50", model_path=tmp_path, cache_dir=tmp_path)


def test_unknown_model_and_runtime(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown model"):
        load_classifier(model="vgg16", cache_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="unknown runtime"):
        load_classifier(runtime="onnx", cache_dir=tmp_path)  # type: ignore[arg-type]


def test_resnet50_runs_when_its_weights_file_is_there(tmp_path: Path, squares: list[bytes]) -> None:
    # Random weights in the legacy .h5 layout of the real file (which cannot be downloaded here).
    from keras.src.legacy.saving import legacy_h5_format

    weights = tmp_path / RESNET50_WEIGHTS_FILE
    with h5py.File(weights, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras.applications.ResNet50(weights=None))
    classifier = load_classifier(
        model="resnet50", model_path=tmp_path, runtime="tensorflow", cache_dir=tmp_path
    )
    assert (classifier.model_name, classifier.spec.width, classifier.spec.scaling) == (
        "resnet50",
        224,
        "caffe",
    )
    result = classifier.classify(squares[:1], top_k=3)[0]
    assert isinstance(result, Classification)
    assert result.top[0].wnid is not None
