"""Checks one upload from its bytes alone: a real image of an accepted format and size, with a safe name.

Only the header is parsed (plus Pillow's `verify()`, which for PNG checks the chunk CRCs and for other formats
costs nothing): the pixels are never decoded here, that is the consumers' job. The content type comes from
the detected format; the client's Content-Type and file extension are never trusted.
"""

from __future__ import annotations

import asyncio
import io
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pipeline_core.errors import PipelineError
from producer_api.image_structure import MAX_FRAMES, TooComplex, check_structure

MAX_FILENAME_CHARS = 120
FALLBACK_FILENAME = "upload"

# Image.MIME only knows the plugins loaded so far; this table does not depend on import order.
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}

# File signatures: a file that starts like an accepted format but does not parse is damaged, not garbage.
SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "WEBP": (b"RIFF",),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}


class UploadRejected(PipelineError):
    """An upload or request the API refuses: carries the HTTP status, a short code and the reason."""

    def __init__(self, status: int, error: str, reason: str, filename: str | None = None) -> None:
        super().__init__(f"{error}: {reason}" + (f" ({filename})" if filename else ""))
        self.status = status
        self.error = error
        self.reason = reason
        self.filename = filename


@dataclass(frozen=True, slots=True)
class ValidatedUpload:
    """An image that passed every check, ready to become an event."""

    data: bytes
    filename: str
    content_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What `validate_upload` accepts."""

    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]


def safe_filename(raw: str | None) -> str:
    """A display-safe base name: no directories, no control characters, no leading dots, at most 120 chars."""
    name = unicodedata.normalize("NFC", raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(_printable(ch) for ch in name)
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        _stem, dot, ext = name.rpartition(".")
        keep = ext if dot and 0 < len(ext) <= 10 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1].rstrip() + ("." + keep if keep else "")
    return name or FALLBACK_FILENAME


def _printable(ch: str) -> str:
    category = unicodedata.category(ch)
    if category[0] == "C" or category in ("Zl", "Zp"):  # control, format, unassigned; line breaks
        return ""
    return " " if category == "Zs" else ch


def validate_upload(raw_filename: str | None, data: bytes, limits: ImageLimits) -> ValidatedUpload:
    """The upload as a `ValidatedUpload`, or `UploadRejected` saying why not."""
    filename = safe_filename(raw_filename)
    if not data:
        raise UploadRejected(400, "empty_file", "the file is empty", filename)
    if len(data) > limits.max_bytes:
        raise UploadRejected(
            413, "too_large", f"{len(data)} bytes is over the limit of {limits.max_bytes} bytes", filename
        )
    image_format, width, height = _inspect(data, limits, filename)
    return ValidatedUpload(data, filename, CONTENT_TYPES[image_format], width, height)


class ValidationPool:
    """Validation on a few worker threads, so that a costly upload never holds the event loop (health checks
    and every other request keep being answered while it is parsed). The concurrency cap of the HTTP server
    bounds the queue in front of the threads."""

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="validate")

    async def validate_all(
        self, files: list[tuple[str | None, bytes]], limits: ImageLimits
    ) -> list[ValidatedUpload]:
        """Every file validated in order on one thread; `UploadRejected` for the first bad one."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _validate_all, files, limits)

    def close(self) -> None:
        """Stop the threads; validations not started yet are dropped (their requests are ending anyway)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _validate_all(files: list[tuple[str | None, bytes]], limits: ImageLimits) -> list[ValidatedUpload]:
    return [validate_upload(name, data, limits) for name, data in files]


def _inspect(data: bytes, limits: ImageLimits, filename: str) -> tuple[str, int, int]:
    try:
        check_structure(data)
    except TooComplex as e:
        raise UploadRejected(400, "too_complex", f"the image is too costly to read: {e}", filename) from e
    try:
        with Image.open(io.BytesIO(data), formats=limits.formats) as image:
            image_format, (width, height) = str(image.format), image.size
            _check_size(width, height, limits, filename)
            if image_format == "WEBP" and getattr(image, "n_frames", 1) > MAX_FRAMES:
                # libwebp has demuxed the whole file by now: the count costs nothing more.
                raise UploadRejected(
                    400, "too_complex", f"an animation of more than {MAX_FRAMES} frames", filename
                )
            image.verify()
    except UnidentifiedImageError:
        raise _unsupported_or_garbage(data, limits, filename) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb(limits, filename) from e
    except (OSError, SyntaxError, ValueError, EOFError, UserWarning) as e:
        # Pillow reports a damaged header or a failed verify() with any of these (and warns of corrupt metadata,
        # which is an error wherever warnings are errors, as in our tests: refused alike, not a 500).
        raise UploadRejected(
            400, "invalid_image", f"the image is damaged or truncated ({e})", filename
        ) from e
    return image_format, width, height


def _check_size(width: int, height: int, limits: ImageLimits, filename: str) -> None:
    if width <= 0 or height <= 0:
        raise UploadRejected(400, "invalid_image", f"the image claims a size of {width}x{height}", filename)
    if width * height > limits.max_pixels:
        raise _bomb(limits, filename, f"{width}x{height}")


def _bomb(limits: ImageLimits, filename: str, size: str = "its size") -> UploadRejected:
    return UploadRejected(
        400, "too_many_pixels", f"{size} is over the limit of {limits.max_pixels} pixels", filename
    )


def _unsupported_or_garbage(data: bytes, limits: ImageLimits, filename: str) -> UploadRejected:
    # Only on the failure path: ask every Pillow plugin, to tell "wrong format" from "not an image at all".
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return _bomb(limits, filename)
    except (OSError, SyntaxError, ValueError, EOFError, UserWarning):
        found = None
    if found is None and any(data.startswith(SIGNATURES[f]) for f in limits.formats if f in SIGNATURES):
        return UploadRejected(400, "invalid_image", "the image is damaged or truncated", filename)
    if found is None:
        return UploadRejected(400, "not_an_image", "the file is not an image this API can read", filename)
    accepted = ", ".join(limits.formats)
    return UploadRejected(
        400, "unsupported_format", f"{found} images are not accepted (accepted: {accepted})", filename
    )
