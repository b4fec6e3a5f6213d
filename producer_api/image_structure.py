"""Caps on what makes an image expensive to parse, checked by walking its container before Pillow reads it.

Pillow parses JPEG markers, PNG chunks and TIFF directories in Python, one at a time, and its cost grows with
their number rather than with the file's size: 2 MB of empty JPEG comment markers took 0.8 s to open. Each
walker here stops at its cap, so its own cost is bounded too, and never decodes pixels. A file these walkers
cannot follow is left to Pillow, which calls it damaged.

The caps are far above what cameras, phones and image libraries write (a photo has some 20 JPEG segments
before its first scan, a progressive one about 10 scans; libpng writes 8 KiB IDAT chunks) and far below what
would cost a noticeable fraction of a second.
"""

from __future__ import annotations

import struct

MAX_JPEG_SEGMENTS = 512  # markers before the first scan (APPn, COM, DQT, DHT, SOF, fill bytes)
MAX_JPEG_SCANS = 100  # start-of-scan markers: libjpeg decodes every one of a progressive file
MIN_PNG_CHUNK_BUDGET = 1024  # chunks allowed whatever the size; larger files get one per KiB
MAX_FRAMES = 1000  # frames of an animation or pages of a TIFF (only the first is classified)
MAX_TIFF_TAGS = 1000  # entries of one TIFF directory
MAX_GIF_BLOCKS_PER_KIB = 8  # GIF blocks and sub-blocks: at most 255 bytes each, so a real file has ~4 a KiB
MIN_GIF_BLOCK_BUDGET = 4096

_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers with no length field
_SOS = b"\xff\xda"


class TooComplex(ValueError):
    """The image's structure is past a cap; the message says which."""


def check_structure(data: bytes) -> None:
    """Raise `TooComplex` if the file has more segments, chunks, scans, frames or tags than the caps allow."""
    try:
        if data.startswith(b"\xff\xd8"):
            _check_jpeg(data)
        elif data.startswith(b"\x89PNG\r\n\x1a\n"):
            _check_png(data)
        elif data.startswith((b"GIF87a", b"GIF89a")):
            _check_gif(data)
        elif data.startswith((b"II*\x00", b"MM\x00*")):
            _check_tiff(data)
    except (struct.error, IndexError):
        return  # a field cut off by the end of the file: truncated, which Pillow reports as damaged


def _check_jpeg(data: bytes) -> None:
    pos, segments = 2, 0
    while pos + 4 <= len(data):
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise TooComplex(f"more than {MAX_JPEG_SEGMENTS} JPEG markers before the image data")
        if data[pos] != 0xFF:
            return  # not a marker where one should be: damaged, Pillow says so
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker == 0xD9:  # end of image before any scan
            return
        elif marker == 0xDA:
            # In entropy-coded data a 0xFF byte is followed by 0x00 or a restart marker, so every FF DA
            # from here on is a real start of scan (of this image, or of the pictures an MPO file appends).
            scans = data.count(_SOS, pos)
            if scans > MAX_JPEG_SCANS:
                raise TooComplex(f"{scans} JPEG scans (at most {MAX_JPEG_SCANS})")
            return
        else:
            (length,) = struct.unpack_from(">H", data, pos + 2)
            pos += 2 + length


def _check_png(data: bytes) -> None:
    budget = max(MIN_PNG_CHUNK_BUDGET, len(data) // 1024)
    pos, chunks, frames = 8, 0, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > budget:
            raise TooComplex(f"more than {budget} PNG chunks in {len(data)} bytes")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return
        if kind == b"acTL" and length >= 8 and pos + 12 <= len(data):
            (declared,) = struct.unpack_from(">I", data, pos + 8)
            if declared > MAX_FRAMES:
                raise TooComplex(f"an animation of {declared} frames (at most {MAX_FRAMES})")
        elif kind == b"fcTL":
            frames += 1
            if frames > MAX_FRAMES:
                raise TooComplex(f"more than {MAX_FRAMES} animation frames")
        pos += 12 + length


def _check_gif(data: bytes) -> None:
    budget = max(MIN_GIF_BLOCK_BUDGET, len(data) // 1024 * MAX_GIF_BLOCKS_PER_KIB)
    blocks = frames = 0

    def spend() -> None:
        nonlocal blocks
        blocks += 1
        if blocks > budget:
            raise TooComplex(f"more than {budget} GIF blocks in {len(data)} bytes")

    def skip_sub_blocks(pos: int) -> int:
        while pos < len(data):
            spend()
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
        return pos

    pos = 13 + _color_table_bytes(data[10]) if len(data) > 10 else len(data)
    while pos < len(data):
        spend()
        introducer = data[pos]
        if introducer == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif introducer == 0x2C and pos + 10 <= len(data):  # image: descriptor, colour table, LZW size
            frames += 1
            if frames > MAX_FRAMES:
                raise TooComplex(f"more than {MAX_FRAMES} GIF frames")
            pos = skip_sub_blocks(pos + 10 + _color_table_bytes(data[pos + 9]) + 1)
        else:
            return  # trailer, or damage: Pillow reads what is there


def _color_table_bytes(flags: int) -> int:
    return 3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0


def _check_tiff(data: bytes) -> None:
    order = "<" if data.startswith(b"II") else ">"
    (offset,) = struct.unpack_from(f"{order}I", data, 4)
    seen: set[int] = set()
    while offset and offset + 2 <= len(data):
        if offset in seen:
            raise TooComplex("the TIFF's directories form a loop")
        seen.add(offset)
        if len(seen) > MAX_FRAMES:
            raise TooComplex(f"more than {MAX_FRAMES} TIFF pages")
        (tags,) = struct.unpack_from(f"{order}H", data, offset)
        if tags > MAX_TIFF_TAGS:
            raise TooComplex(f"a TIFF directory of {tags} entries (at most {MAX_TIFF_TAGS})")
        next_at = offset + 2 + 12 * tags
        if next_at + 4 > len(data):
            return
        (offset,) = struct.unpack_from(f"{order}I", data, next_at)
