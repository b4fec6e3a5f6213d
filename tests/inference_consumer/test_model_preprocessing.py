"""Preprocessing: every Pillow mode, EXIF orientation, animation, broken and hostile inputs, JPEG draft."""

from __future__ import annotations

import io

import numpy as np
import pytest
from keras.applications.resnet50 import preprocess_input
from PIL import Image
from support import png_header_claiming

from inference_consumer.model import ImageClassifier
from inference_consumer.model.preprocessing import (
    EFFICIENTNET_LITE0_SPEC,
    RESNET50_SPEC,
    ImageSpec,
    preprocess,
)
from pipeline_core.errors import ImageDecodeError

SPEC = EFFICIENTNET_LITE0_SPEC
WHITE = (255 - 127) / 128


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cat(photo_pixels: dict[str, np.ndarray]) -> Image.Image:
    return Image.fromarray(photo_pixels["chelsea"])


def _grey_as(mode: str, grey: np.ndarray) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    return Image.fromarray(grey.astype(np.float32) / 255)  # "F": floats in 0..1


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("1", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
    ],
)
def test_plain_modes_decode(cat: Image.Image, mode: str, fmt: str) -> None:
    pixels = preprocess(encode(cat.convert(mode), fmt), SPEC)
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.float32
    assert -1.0 <= pixels.min() < pixels.max() <= 1.0


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF")])
def test_high_depth_modes_match_8_bit_grey(cat: Image.Image, mode: str, fmt: str) -> None:
    grey = np.asarray(cat.convert("L"))
    image = _grey_as(mode, grey)
    assert image.mode == mode
    expected = preprocess(encode(Image.fromarray(grey), "PNG"), SPEC)
    np.testing.assert_allclose(preprocess(encode(image, fmt), SPEC), expected, atol=2 / 128)


@pytest.mark.parametrize(("mode", "fmt"), [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "GIF")])
def test_transparency_is_composited_on_white(mode: str, fmt: str) -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 300, 150))  # opaque red top half, transparent bottom half
    converted = image.convert(mode) if mode != "P" else image.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "P":
        converted.info["transparency"] = converted.getpixel((0, 299))
    data = (
        encode(converted, fmt, transparency=converted.info["transparency"])
        if mode == "P"
        else encode(converted, fmt)
    )
    pixels = preprocess(data, SPEC)
    np.testing.assert_allclose(pixels[-20:], WHITE)
    assert pixels[:20, :, 1].max() < 0  # the opaque half stays dark in green


def test_exif_rotation_gives_the_upright_class(cat: Image.Image, litert_classifier: ImageClassifier) -> None:
    rotated = cat.transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with the tag that says "rotate 90 degrees clockwise to display"
    upright_pixels = preprocess(encode(cat, quality=95), SPEC)
    tagged_pixels = preprocess(encode(rotated, quality=95, exif=exif), SPEC)
    assert np.abs(tagged_pixels - upright_pixels).mean() < 0.03
    upright, tagged = litert_classifier.classify(
        [encode(cat, quality=95), encode(rotated, quality=95, exif=exif)]
    )
    assert not isinstance(upright, ImageDecodeError)
    assert not isinstance(tagged, ImageDecodeError)
    assert tagged.top[0].label == upright.top[0].label


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    pixels = preprocess(data, SPEC)
    np.testing.assert_allclose(pixels[112, 112], [WHITE, -127 / 128, -127 / 128])


def test_truncated_jpeg(cat: Image.Image) -> None:
    data = encode(cat)
    with pytest.raises(ImageDecodeError, match="truncated"):
        preprocess(data[: len(data) // 2], SPEC)


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"<svg/>"])
def test_non_images(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        preprocess(data, SPEC)


@pytest.mark.parametrize("side", [10_000, 13_000, 60_000])  # 1.1x, 1.9x and 40x Pillow's limit
def test_decompression_bomb_is_refused(side: int) -> None:
    with pytest.raises(ImageDecodeError, match="too large"):
        preprocess(png_header_claiming(side, side), SPEC)


def test_jpeg_draft_keeps_top1(
    photo_pixels: dict[str, np.ndarray], litert_classifier: ImageClassifier
) -> None:
    # Photos scaled up 4x so libjpeg's 1/2 or 1/4 draft decoding kicks in.
    for name, pixels in photo_pixels.items():
        image = Image.fromarray(pixels)
        data = encode(image.resize((image.width * 4, image.height * 4), Image.Resampling.LANCZOS), quality=92)
        drafted, full = preprocess(data, SPEC), preprocess(data, SPEC, draft=False)
        scores = litert_classifier.predict(np.stack([drafted, full]))
        assert scores[0].argmax() == scores[1].argmax(), name


def test_custom_spec_resizes_without_crop() -> None:
    data = encode(Image.new("RGB", (100, 50), (255, 255, 255)), "PNG")
    pixels = preprocess(data, ImageSpec(width=40, height=30, scaling="unit"))
    assert pixels.shape == (30, 40, 3)
    np.testing.assert_allclose(pixels, 1.0)
    np.testing.assert_allclose(preprocess(data, ImageSpec(40, 30, "raw")), 255.0)


def test_caffe_scaling_matches_keras_resnet50(cat: Image.Image) -> None:
    data = encode(cat, "PNG")
    resized = np.asarray(cat.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
    np.testing.assert_allclose(preprocess(data, RESNET50_SPEC), preprocess_input(resized.copy()), atol=1e-4)


@pytest.mark.parametrize("mode", ["F", "I", "I;16", "CMYK", "P", "RGBA"])
def test_odd_modes_cost_memory_for_a_small_image_not_a_full_size_one(mode: str) -> None:
    """A 4-megapixel image of an odd mode is shrunk before it is converted: the Python-side allocations
    (numpy arrays, converted copies) stay well under one float64 copy of the full image, where the earlier code
    made three. (16-bit greyscale is the largest: Pillow hands over its raw pixels, 2 bytes each, as a joined
    list of chunks, so twice, before they are strided.)"""
    import tracemalloc

    side = 2048
    gradient = np.linspace(0, 255, side * side, dtype=np.float32).reshape(side, side)
    if mode == "F":
        image = Image.fromarray(gradient / 255.0, "F")
    elif mode == "I":
        image = Image.fromarray(gradient.astype(np.int32), "I")
    elif mode == "I;16":
        image = Image.fromarray(gradient.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(gradient.astype(np.uint8), "L").convert(mode)
    data = encode(image, "TIFF") if mode != "P" else encode(image, "PNG")
    full_float64 = side * side * 8
    tracemalloc.start()
    try:
        pixels = preprocess(data, SPEC)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (224, 224, 3)
    assert peak < full_float64 * 0.6, f"{mode}: {peak} bytes traced at peak for a {side}x{side} image"
