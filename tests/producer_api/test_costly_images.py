"""Images built to be expensive to parse: past the structure caps they are refused with 400 `too_complex`,
at a cost bounded whatever their size; real files with many (but ordinary) segments still pass."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from producer_api.image_structure import MAX_FRAMES, MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, MAX_TIFF_TAGS
from producer_api.validation import ImageLimits, UploadRejected, validate_upload

pytestmark = pytest.mark.timeout(120)
LIMITS = ImageLimits(
    max_bytes=16 * 1024 * 1024, max_pixels=25_000_000, formats=("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
)
PICTURE = Image.fromarray((np.random.default_rng(7).random((120, 160, 3)) * 255).astype(np.uint8))


def encode(fmt: str, image: Image.Image = PICTURE, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def jpeg_with_comments(count: int) -> bytes:
    jpeg = encode("JPEG")
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def png_with_empty_chunks(count: int) -> bytes:
    png = encode("PNG")
    return png[:33] + png_chunk(b"tEXt") * count + png[33:]


def jpeg_with_scans(count: int) -> bytes:
    jpeg = encode("JPEG", progressive=True)
    scan_at = jpeg.index(b"\xff\xda")
    # Extra empty scans before the real first one (a decoder walks each of them).
    header = jpeg[scan_at : scan_at + 2 + struct.unpack_from(">H", jpeg, scan_at + 2)[0]]
    return jpeg[:scan_at] + header * count + jpeg[scan_at:]


def gif_with_tiny_sub_blocks(count: int) -> bytes:
    gif = encode("GIF")
    trailer = gif.rindex(b"\x3b")
    # An application extension made of `count` one-byte sub-blocks.
    extension = b"\x21\xff\x0bNETSCAPE2.0" + b"\x01\x00" * count + b"\x00"
    return gif[:trailer] + extension + gif[trailer:]


def tiff_with_loop() -> bytes:
    tiff = bytearray(encode("TIFF"))
    (first,) = struct.unpack_from("<I", tiff, 4)
    (tags,) = struct.unpack_from("<H", tiff, first)
    struct.pack_into("<I", tiff, first + 2 + 12 * tags, first)  # the next directory is this one again
    return bytes(tiff)


def tiff_with_tags(count: int) -> bytes:
    header = b"II*\x00" + struct.pack("<I", 8)
    entries = b"".join(struct.pack("<HHII", 50000 + (k % 1000), 1, 1, 0) for k in range(count))
    return header + struct.pack("<H", count) + entries + b"\x00\x00\x00\x00"


def apng_declaring(frames: int) -> bytes:
    png = encode("PNG")
    return png[:33] + png_chunk(b"acTL", struct.pack(">II", frames, 0)) + png[33:]


def rejected(data: bytes) -> UploadRejected:
    with pytest.raises(UploadRejected) as caught:
        validate_upload("costly", data, LIMITS)
    return caught.value


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: jpeg_with_comments(500_000), "JPEG markers"),
        (lambda: png_with_empty_chunks(170_000), "PNG chunks"),
        (lambda: jpeg_with_scans(MAX_JPEG_SCANS + 1), "JPEG scans"),
        (lambda: gif_with_tiny_sub_blocks(1_000_000), "GIF blocks"),
        (tiff_with_loop, "loop"),
        (lambda: tiff_with_tags(MAX_TIFF_TAGS + 1), "TIFF directory"),
        (lambda: apng_declaring(MAX_FRAMES + 1), "frames"),
    ],
)
def test_costly_structures_are_refused_at_a_bounded_cost(make: object, what: str) -> None:
    data = make()  # type: ignore[operator]
    photo = encode("JPEG")
    started = time.perf_counter()
    for _ in range(20):
        validate_upload("photo.jpg", photo, LIMITS)
    baseline = (time.perf_counter() - started) / 20
    started = time.perf_counter()
    error = rejected(data)
    cost = time.perf_counter() - started
    assert (error.status, error.error) == (400, "too_complex"), error.reason
    assert what in error.reason
    # A ratio to an ordinary photo's check in the same run, not a time: the caps bound the walk, however
    # many megabytes of markers follow. (Unbounded, the 2 MB of JPEG comments cost ~0.8 s, 4000x a photo.)
    assert cost < max(200 * baseline, 0.05), f"{cost:.4f} s against {baseline:.6f} s for a photo"


@pytest.mark.parametrize(
    "data",
    [
        jpeg_with_comments(MAX_JPEG_SEGMENTS // 2),
        png_with_empty_chunks(500),
        jpeg_with_scans(MAX_JPEG_SCANS // 2),
        gif_with_tiny_sub_blocks(2000),
        apng_declaring(10),
        encode("PNG", optimize=False),
        encode("TIFF", compression="tiff_lzw"),
        encode("WEBP", save_all=True, append_images=[PICTURE] * 5),
        encode("GIF", save_all=True, append_images=[PICTURE.rotate(k) for k in range(30)], duration=40),
    ],
    ids=["comments", "chunks", "scans", "gif-blocks", "apng", "png", "tiff", "webp-anim", "gif-anim"],
)
def test_ordinary_structure_under_the_caps_passes(data: bytes) -> None:
    assert validate_upload("fine", data, LIMITS).width == PICTURE.width


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from([b"tEXt", b"zTXt", b"iTXt", b"sPLT", b"fcTL", b"abcd"]),
    count=st.integers(min_value=0, max_value=20_000),
    size=st.integers(min_value=0, max_value=16),
)
def test_generated_chunk_floods_give_a_clear_answer(kind: bytes, count: int, size: int) -> None:
    png = encode("PNG")
    data = png[:33] + png_chunk(kind, b"\x00" * size) * count + png[33:]
    answer: UploadRejected | str
    try:
        answer = validate_upload("flood.png", data, LIMITS).content_type
    except UploadRejected as e:
        answer = e
    if isinstance(answer, UploadRejected):
        assert (answer.status, answer.error) in ((400, "too_complex"), (400, "invalid_image")), answer.reason
    else:
        assert answer == "image/png"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    signature=st.sampled_from(
        [b"\xff\xd8", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"]
    ),
    tail=st.binary(max_size=64),
)
def test_any_bytes_after_a_signature_get_a_clear_answer(signature: bytes, tail: bytes) -> None:
    # Short and cut-off headers included: the walkers must never fail where Pillow would say "damaged".
    with pytest.raises(UploadRejected) as refused:
        validate_upload("odd", signature + tail, LIMITS)
    assert refused.value.status == 400
