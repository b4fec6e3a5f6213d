"""Image bytes to a model-ready float32 array: decode, orient, flatten to RGB, crop, resize, scale."""

from __future__ import annotations

import importlib
import io
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline_core.errors import ImageDecodeError

Scaling = Literal["efficientnet-lite", "raw", "unit", "caffe"]
SCALINGS: tuple[str, ...] = get_args(Scaling)
# Formats a producer may plausibly send; limiting them keeps Pillow's rarer decoders off untrusted bytes.
# (Multi-picture JPEGs from cameras open through the JPEG plugin and report format "MPO".)
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# Image.open(formats=...) only sees plugins already imported, and Pillow imports most of them lazily.
for _plugin in ("Jpeg", "Png", "Gif", "WebP", "Bmp", "Tiff"):
    importlib.import_module(f"PIL.{_plugin}ImagePlugin")
_ORIENTATION_TAG = 0x0112
_WHITE = (255, 255, 255)
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """What a model wants: input size, scaling, centre-crop fraction of the short side (None: no crop)."""

    width: int
    height: int
    scaling: Scaling
    crop_fraction: float | None = None


# Google's evaluation crop for EfficientNet: the centre size/(size + 32) of the short side (0.875 at 224).
EFFICIENTNET_LITE0_SPEC = ImageSpec(224, 224, "efficientnet-lite", crop_fraction=224 / 256)
EFFICIENTNET_LITE1_SPEC = ImageSpec(240, 240, "efficientnet-lite", crop_fraction=240 / 272)
EFFICIENTNET_LITE2_SPEC = ImageSpec(260, 260, "efficientnet-lite", crop_fraction=260 / 292)
RESNET50_SPEC = ImageSpec(224, 224, "caffe")


def preprocess(data: bytes, spec: ImageSpec, *, draft: bool = True) -> np.ndarray:
    """Decode one image and return a (height, width, 3) float32 array ready for the model.

    The image is shrunk to about twice the size the model needs before any mode conversion, so that an odd
    mode (16-bit, float, palette, CMYK) costs a conversion of a small image, not of a full-size one.
    """
    with _open(data) as image:
        if draft:
            draft_jpeg(image, spec)
        try:
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            rgb = _to_rgb(_oriented(_shrink(image, spec), orientation))
            resized = _crop_resize(rgb, spec)
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(f"image too large to decode safely ({e})") from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageDecodeError(f"corrupt or truncated image data ({e})") from e
    return scale(np.asarray(resized, dtype=np.float32), spec.scaling)


def scale(pixels: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Map float32 RGB pixels in 0..255 to the range the model was trained on (in place where possible)."""
    if scaling == "efficientnet-lite":
        pixels -= 127.0
        pixels /= 128.0
    elif scaling == "unit":
        pixels /= 255.0
    elif scaling == "caffe":
        # keras.applications.resnet50.preprocess_input: RGB to BGR, then subtract the ImageNet BGR mean.
        pixels = pixels[..., ::-1] - _CAFFE_BGR_MEAN
    return pixels


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"image too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageDecodeError(f"corrupt image header ({e})") from e
    width, height = image.size
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse the whole range.
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        image.close()
        raise ImageDecodeError(f"image too large to decode safely ({width}x{height} pixels)")
    if width == 0 or height == 0:
        image.close()
        raise ImageDecodeError("image has no pixels")
    return image


def draft_jpeg(image: Image.Image, spec: ImageSpec) -> None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when that leaves enough pixels for the crop."""
    if image.format not in ("JPEG", "MPO"):
        return
    # Both sides of the draft stay >= this, so the crop (or plain resize) never upsamples a draft.
    side = needed_side(spec)
    image.draft(None, (side, side))


def needed_side(spec: ImageSpec) -> int:
    """The short side an image needs so that the crop, resized to the model's input, is never upsampled."""
    return math.ceil(max(spec.width, spec.height) / (spec.crop_fraction or 1.0))


def _shrink(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """The image shrunk by a whole factor while its short side stays at least twice what the model needs.

    `reduce` averages boxes of pixels (no aliasing) in the image's own mode; palette and 1-bit images, which it
    does not take, are sampled (their colours are few and flat anyway); 16-bit greyscale, which neither takes,
    is strided as an array.
    """
    factor = min(image.size) // (2 * needed_side(spec))
    if factor < 2:
        return image
    if image.mode in ("P", "1"):
        width, height = image.size
        return image.resize((width // factor, height // factor), Image.Resampling.NEAREST)
    if image.mode in _UINT16_ORDER:
        # The raw pixels viewed as an array and strided: no float copy of the full image.
        width, height = image.size
        raw = np.frombuffer(image.tobytes(), dtype=_UINT16_ORDER[image.mode]).reshape(height, width)
        return Image.fromarray(np.ascontiguousarray(raw[::factor, ::factor], dtype=np.uint16))
    return image.reduce(factor)


_UINT16_ORDER = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}
# EXIF orientation to the transposition that shows the picture upright (as ImageOps.exif_transpose does).
_TRANSPOSITIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _oriented(image: Image.Image, orientation: object) -> Image.Image:
    # The orientation is read before shrinking: a reduced copy does not keep TIFF's tags.
    method = _TRANSPOSITIONS.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8-bit: 16-bit range /257, 0..1 floats x255, else min-max."""
    # float32: the image is already shrunk, and 8-bit output needs no more precision than that.
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        pixels = pixels * 255.0
    elif image.mode.startswith("I;16") or (low >= 0.0 and 255.0 < high <= 65535.0):
        pixels = pixels / 257.0
    elif (low < 0.0 or high > 255.0) and high > low:
        pixels = (pixels - low) * (255.0 / (high - low))
    elif low < 0.0 or high > 255.0:  # one value outside 0..255 everywhere: a flat picture, mid-grey
        pixels = np.full_like(pixels, 128.0)
    grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def crop_box(width: int, height: int, spec: ImageSpec) -> tuple[float, float, float, float]:
    """The region of a width x height image the model sees: the centre crop, or all of it without one."""
    if spec.crop_fraction is None:
        return 0.0, 0.0, float(width), float(height)
    side = spec.crop_fraction * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _crop_resize(image: Image.Image, spec: ImageSpec) -> Image.Image:
    box = crop_box(*image.size, spec)
    return image.resize((spec.width, spec.height), Image.Resampling.BILINEAR, box=box)


def validate_scaling(name: str) -> Scaling:
    """Check a scaling name from settings."""
    if name not in SCALINGS:
        raise ValueError(f"unknown preprocessing {name!r}; choose one of {', '.join(SCALINGS)}")
    return name  # type: ignore[return-value]
