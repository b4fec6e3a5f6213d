"""The restricted reader of the PyTorch weights file: real file read, tampered files refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from inference_consumer.model import load_classifier
from inference_consumer.model.efficientnet_lite import VARIANTS, build_efficientnet_lite0, load_state_dict
from inference_consumer.model.weights import read_state_dict
from pipeline_core.errors import ModelLoadError

LITE0 = VARIANTS["efficientnet-lite0"]
_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


class _RunsCommand:
    """Pickles to a call of os.system, as a malicious weights file would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def _legacy_file(path: Path, state: object) -> Path:
    with path.open("wb") as f:
        for obj in (_MAGIC, 1001, _SYS_INFO, state, []):
            pickle.dump(obj, f, protocol=2)
    return path


def test_reads_the_packaged_weights(weights_path: Path) -> None:
    state = read_state_dict(weights_path)
    assert len(state) == 296
    parameters = sum(a.size for k, a in state.items() if not k.endswith("num_batches_tracked"))
    assert parameters == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].dtype == np.float32
    assert state["_fc.weight"].flags.c_contiguous


def test_refuses_a_pickle_that_calls_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = _legacy_file(tmp_path / "evil.pth", _RunsCommand(f"touch {marker}"))
    with pytest.raises(ModelLoadError, match=r"evil\.pth.*refusing to load (posix|os)\.system"):
        read_state_dict(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("first_pickle", [_RunsCommand("true"), [1, 2]])
def test_refuses_code_or_junk_anywhere(tmp_path: Path, first_pickle: object) -> None:
    path = tmp_path / "odd.pth"
    path.write_bytes(pickle.dumps(first_pickle, protocol=2))
    with pytest.raises(ModelLoadError, match=r"odd\.pth"):
        read_state_dict(path)


def test_truncated_weights_name_the_file_and_chain_the_cause(tmp_path: Path, weights_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_path.read_bytes()[:30_000])
    with pytest.raises(ModelLoadError, match=r"truncated\.pth") as caught:
        read_state_dict(truncated)
    assert caught.value.__cause__ is not None


def test_truncated_storages_name_the_file(tmp_path: Path, weights_path: Path) -> None:
    truncated = tmp_path / "short.pth"
    truncated.write_bytes(weights_path.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"short\.pth.*truncated"):
        read_state_dict(truncated)


def test_load_classifier_refuses_truncated_weights(tmp_path: Path, weights_path: Path) -> None:
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(weights_path.read_bytes()[:5_000_000])
    with pytest.raises(ModelLoadError, match=r"cut\.pth"):
        load_classifier(model_path=truncated, cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("*.tflite"))


def test_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "zip-style.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match=r"zip-style\.pth"):
        read_state_dict(path)


def test_shape_mismatch_names_file_and_tensor(tmp_path: Path, weights_path: Path) -> None:
    state = read_state_dict(weights_path)
    state["_blocks.3._project_conv.weight"] = np.zeros((41, 144, 1, 1), np.float32)
    with pytest.raises(
        ModelLoadError, match=r"model\.pth: tensor _blocks\.3\._project_conv\.weight has shape"
    ):
        load_state_dict(build_efficientnet_lite0(), state, Path("model.pth"), LITE0)


def test_missing_tensor_is_named(weights_path: Path) -> None:
    state = read_state_dict(weights_path)
    del state["_bn1.running_var"]
    with pytest.raises(ModelLoadError, match=r"_bn1\.running_var is missing"):
        load_state_dict(build_efficientnet_lite0(), state, weights_path, LITE0)
