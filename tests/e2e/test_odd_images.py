"""Odd but valid images, through the whole pipeline: each one is accepted and gets the photo's label."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from support import upload, wait_by_polling

from launcher.system import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def odd_versions(photo: bytes) -> dict[str, bytes]:
    """The same photo as CMYK, 16-bit, palette, alpha, animated and EXIF-rotated files."""
    rgb = Image.open(io.BytesIO(photo)).convert("RGB")
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(255)
    frames = [rgb.convert("P", palette=Image.Palette.ADAPTIVE), Image.new("P", rgb.size)]
    rotated = rgb.rotate(90, expand=True)  # stored sideways; the EXIF tag says "rotate 270 to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "sixteen-bit.png": encode(grey16, "PNG"),
        "palette.png": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "alpha.png": encode(rgba, "PNG"),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "exif-rotated.jpg": encode(rotated, "JPEG", exif=exif),
        "webp.webp": encode(rgb, "WEBP", quality=90),
    }


def test_odd_but_valid_images_are_classified(running_system: System, photos: dict[str, bytes]) -> None:
    files = odd_versions(photos["coffee"])
    with httpx.Client(base_url=running_system.api_url, timeout=30) as client:
        jobs = upload(client, files)
        results = {job["filename"]: wait_by_polling(client, job["result_url"]) for job in jobs}
    labels = {name: (r["status"], r["label"]) for name, r in results.items()}
    # Grey 16-bit loses the colour that tells an espresso apart; it must still be classified, not fail.
    assert labels.pop("sixteen-bit.png")[0] == "done"
    assert all(label == ("done", "espresso") for label in labels.values()), labels
