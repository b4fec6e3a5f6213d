"""The default model on both runtimes: photos, runtime agreement, batches, labels, cache, lean imports."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference_consumer.model import Classification, ImageClassifier, load_classifier
from inference_consumer.model.sources import ModelSource
from inference_consumer.model.tflite_cache import cached_tflite_path
from pipeline_core.errors import ImageDecodeError

EXPECTED_TOP1 = {
    "chelsea": {"tiger_cat", "Egyptian_cat", "tabby"},
    "coffee": {"espresso"},
    "china": {"palace", "monastery", "pagoda"},
    "flower": {"daisy", "pot", "vase", "bee"},
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["litert", "tf"])
def classifier(request: pytest.FixtureRequest) -> ImageClassifier:
    return request.getfixturevalue(f"{request.param}_classifier")  # type: ignore[no-any-return]


def _ok(result: Classification | ImageDecodeError) -> Classification:
    assert isinstance(result, Classification), result
    return result


def test_real_photos(classifier: ImageClassifier, photos: dict[str, bytes]) -> None:
    results = classifier.classify(list(photos.values()), top_k=5)
    for name, result in zip(photos, results, strict=True):
        top = _ok(result).top
        assert top[0].label in EXPECTED_TOP1[name], (name, top)
        assert len(top) == 5
        assert all(a.score >= b.score for a, b in itertools.pairwise(top))
    assert _ok(results[1]).top[0].score > 0.8  # espresso is an easy one


def test_identity(litert_classifier: ImageClassifier, tf_classifier: ImageClassifier) -> None:
    for classifier, runtime in ((litert_classifier, "litert"), (tf_classifier, "tensorflow")):
        assert (classifier.model_name, classifier.runtime) == ("efficientnet-lite0", runtime)
        assert len(classifier.model_version) == 12
        assert int(classifier.model_version, 16) >= 0
    assert litert_classifier.model_version == tf_classifier.model_version


def test_runtimes_agree(
    litert_classifier: ImageClassifier, tf_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    batch = np.stack([litert_classifier.preprocess(data) for data in photos.values()])
    np.testing.assert_allclose(litert_classifier.predict(batch), tf_classifier.predict(batch), atol=1e-4)


def test_result_does_not_depend_on_the_batch(classifier: ImageClassifier, photos: dict[str, bytes]) -> None:
    images = list(photos.values()) * 2
    alone = classifier.predict(classifier.preprocess(images[0])[None])
    batch = classifier.predict(np.stack([classifier.preprocess(data) for data in images]))
    assert batch.shape == (8, 1000)
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(batch[4], alone[0], atol=1e-5)
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-4)


def test_undecodable_image_keeps_its_slot(
    litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    results = litert_classifier.classify([b"junk", photos["coffee"], photos["chelsea"][:500]], top_k=3)
    assert isinstance(results[0], ImageDecodeError)
    assert isinstance(results[2], ImageDecodeError)
    assert _ok(results[1]).top[0].label == "espresso"
    assert len(_ok(results[1]).top) == 3
    assert litert_classifier.classify([]) == []
    assert litert_classifier.classify([b"junk"])[0].args  # type: ignore[union-attr]


def test_labels_have_keras_names_and_wordnet_ids(
    litert_classifier: ImageClassifier, photos: dict[str, bytes]
) -> None:
    labels = litert_classifier.labels
    assert len(labels) == 1000
    assert (labels.names[282], labels.names[248], labels.names[967]) == (
        "tiger_cat",
        "Eskimo_dog",
        "espresso",
    )
    assert labels.wnids[0] == "n01440764"
    best = _ok(litert_classifier.classify([photos["coffee"]], top_k=1)[0]).top[0]
    assert (best.label, best.wnid, best.index) == ("espresso", "n07920052", 967)


def test_cache_is_reused(
    litert_classifier: ImageClassifier, model_cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (cached,) = model_cache_dir.glob("efficientnet-lite0-*.tflite")
    mtime = cached.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="inference_consumer.model"):
        again = load_classifier(cache_dir=model_cache_dir)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("using cached") for m in messages)
    assert not any(m.startswith("converting") for m in messages)
    assert cached.stat().st_mtime_ns == mtime
    assert again.model_version == litert_classifier.model_version
    assert not list(model_cache_dir.glob(".*.tmp"))


def test_cache_key_follows_the_weights_hash(tmp_path: Path) -> None:
    one = ModelSource("efficientnet-lite0", "efficientnet-lite0", Path("a.pth"), "ab" * 32)
    other = ModelSource("efficientnet-lite0", "efficientnet-lite0", Path("a.pth"), "cd" * 32)
    assert cached_tflite_path(one, tmp_path) != cached_tflite_path(other, tmp_path)
    assert "ab" * 32 in cached_tflite_path(one, tmp_path).name


def test_litert_process_does_not_import_tensorflow(
    litert_classifier: ImageClassifier, model_cache_dir: Path, photos: dict[str, bytes], tmp_path: Path
) -> None:
    image = tmp_path / "coffee.png"
    image.write_bytes(photos["coffee"])
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from inference_consumer.model import load_classifier\n"
        f"c = load_classifier(cache_dir=Path({str(model_cache_dir)!r}))\n"
        f"print(c.classify([Path({str(image)!r}).read_bytes()])[0].top[0].label)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across fork and exec.
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out[:3] == ["espresso", "False", "False"]
    assert int(out[3]) < 400 * 1024  # peak RSS in KiB
