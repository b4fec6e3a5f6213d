"""validate_upload and safe_filename: pure functions, no broker."""

from __future__ import annotations

import time

import pytest
from api_helpers import make_image
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from support import png_header_claiming

from producer_api.settings import ApiSettings
from producer_api.validation import (
    MAX_FILENAME_CHARS,
    ImageLimits,
    UploadRejected,
    safe_filename,
    validate_upload,
)

pytestmark = pytest.mark.timeout(60)
LIMITS = ImageLimits(
    max_bytes=1_000_000, max_pixels=40_000_000, formats=("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_each_accepted_format_passes_with_its_content_type(fmt: str, content_type: str) -> None:
    upload = validate_upload("photo.bin", make_image(fmt, (30, 20)), LIMITS)
    assert (upload.content_type, upload.width, upload.height, upload.filename) == (
        content_type,
        30,
        20,
        "photo.bin",
    )


def test_a_real_photo_passes_quickly(photos: dict[str, bytes]) -> None:
    started = time.perf_counter()
    for _ in range(100):
        validate_upload("chelsea.jpg", photos["chelsea"], LIMITS)
    assert (time.perf_counter() - started) / 100 < 0.005, "header parse only: well under a millisecond or so"


def test_a_format_not_in_the_settings_is_refused_by_name() -> None:
    only_jpeg = ImageLimits(1_000_000, 40_000_000, ("JPEG",))
    with pytest.raises(UploadRejected) as refused:
        validate_upload("a.png", make_image("PNG"), only_jpeg)
    assert refused.value.error == "unsupported_format"
    assert "PNG" in refused.value.reason


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"", 400, "empty_file"),
        (b"\x00" * 1_000_001, 413, "too_large"),
        (b"GIF89a" + b"\x00" * 3, 400, "invalid_image"),
        (make_image("PNG")[:-30], 400, "invalid_image"),
        (png_header_claiming(100_000, 100_000), 400, "too_many_pixels"),
        (png_header_claiming(8000, 6000), 400, "too_many_pixels"),  # 48 Mpx: over our limit, under Pillow's
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 400, "not_an_image"),
    ],
)
def test_bad_uploads_are_refused_with_status_and_code(data: bytes, status: int, error: str) -> None:
    with pytest.raises(UploadRejected) as refused:
        validate_upload("x.png", data, LIMITS)
    assert (refused.value.status, refused.value.error, refused.value.filename) == (status, error, "x.png")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\me\\cat.JPG", "cat.JPG"),
        ("a\x00b\x1b[31m\n.png", "ab[31m.png"),
        (".hidden.png", "hidden.png"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("  spaced name.jpg  ", "spaced name.jpg"),
        ("café.jpg", "café.jpg"),
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_a_long_filename_is_cut_keeping_its_extension() -> None:
    name = safe_filename("y" * 1000 + ".jpeg")
    assert len(name) == MAX_FILENAME_CHARS
    assert name.endswith("y.jpeg")


@given(st.text(max_size=400))
def test_safe_filename_never_has_a_path_or_control_character(raw: str) -> None:
    name = safe_filename(raw)
    assert 0 < len(name) <= MAX_FILENAME_CHARS
    assert "/" not in name
    assert "\\" not in name
    assert not name.startswith(".")
    assert all(ch.isprintable() or ch == " " for ch in name)


def test_settings_refuse_unsafe_values_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match="RESULTS_PUBLIC_URL"):
        ApiSettings(results_public_url="ftp://x", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="ACCEPTED_FORMATS"):
        ApiSettings(accepted_formats=(), _env_file=None)  # type: ignore[call-arg]
    settings = ApiSettings(results_public_url="https://r.example/", _env_file=None)  # type: ignore[call-arg]
    assert settings.results_url_for_api == "https://r.example"
