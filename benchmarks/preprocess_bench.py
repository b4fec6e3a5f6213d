"""What each step of the consumer's image path costs, and what the lighter alternatives would save.

`.venv/bin/python -m benchmarks.preprocess_bench` (about 20 s): times `preprocess` (the consumer's path from
record bytes to the model's float32 input) on the benchmark's four photos as they are (451x300 to 640x427) and
re-encoded at a phone camera's 4032x3024, with Pillow's draft (DCT-scaled JPEG decoding) on and off, and each
of its steps alone: decode, crop and resize, float conversion and scaling. Where `simplejpeg` (libjpeg-turbo's
decoder straight into numpy) or `cv2` (OpenCV's SIMD resize) is importable, it times those too, on the same
bytes; neither is a dependency of the project (`pip install simplejpeg opencv-python-headless` into a scratch
target to compare). CPU time per image, the median of several rounds; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
from PIL import Image

from benchmarks.pipeline_bench import bench_photos
from inference_consumer.model.preprocessing import (
    EFFICIENTNET_LITE0_SPEC,
    crop_box,
    draft_jpeg,
    needed_side,
    preprocess,
    scale,
)

CAMERA_SIZE = (4032, 3024)
SPEC = EFFICIENTNET_LITE0_SPEC


def camera_photos(photos: Sequence[bytes], size: tuple[int, int] = CAMERA_SIZE) -> list[bytes]:
    """The photos upscaled to a camera's size and saved as JPEG of quality 90, as a phone would send them."""
    large = []
    for data in photos:
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
            large.append(buffer.getvalue())
    return large


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _decode_draft(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    draft_jpeg(image, SPEC)  # as `preprocess` asks for it
    image.load()
    return image


def _resize(image: Image.Image) -> Image.Image:
    return image.resize((SPEC.width, SPEC.height), Image.Resampling.BILINEAR, box=crop_box(*image.size, SPEC))


def steps(
    photos: Sequence[bytes], simplejpeg: ModuleType | None, cv2: ModuleType | None
) -> dict[str, Callable[[bytes], object]]:
    """Name -> the work timed per image. Steps after the decode start from an image decoded beforehand."""
    decoded = {data: _decode(data) for data in photos}
    resized = {data: _resize(decoded[data]) for data in photos}
    work: dict[str, Callable[[bytes], object]] = {
        "preprocess, as the consumer runs it (draft on)": lambda d: preprocess(d, SPEC),
        "preprocess with the draft off": lambda d: preprocess(d, SPEC, draft=False),
        "  decode (Pillow, full size)": _decode,
        "  decode (Pillow, draft)": _decode_draft,
        "  crop and resize to 224x224 (Pillow, bilinear, from full size)": lambda d: _resize(decoded[d]),
        "  to float32 and scale": lambda d: scale(np.asarray(resized[d], dtype=np.float32), SPEC.scaling),
    }
    if simplejpeg is not None:
        work["  decode (simplejpeg, full size)"] = lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB")
        side = needed_side(SPEC)
        work["  decode (simplejpeg, smallest DCT scale >= the crop)"] = lambda d: simplejpeg.decode_jpeg(
            d, colorspace="RGB", min_width=side, min_height=side
        )
    if cv2 is not None:
        arrays = {data: np.asarray(decoded[data].convert("RGB")) for data in photos}

        def cv2_resize(data: bytes, interpolation: int) -> object:
            array = arrays[data]
            left, top, right, bottom = (round(v) for v in crop_box(array.shape[1], array.shape[0], SPEC))
            return cv2.resize(
                array[top:bottom, left:right], (SPEC.width, SPEC.height), interpolation=interpolation
            )

        work["  crop and resize (OpenCV, area: antialiased)"] = lambda d: cv2_resize(d, cv2.INTER_AREA)
        work["  crop and resize (OpenCV, linear: aliases past 2x)"] = lambda d: cv2_resize(
            d, cv2.INTER_LINEAR
        )
    return work


def per_image_ms(work: Callable[[bytes], object], photos: Sequence[bytes], rounds: int, repeat: int) -> float:
    """Median over `rounds` of the CPU milliseconds per image, each round `repeat` passes over the photos."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(repeat):
            for data in photos:
                work(data)
        samples.append((time.process_time() - started) / (repeat * len(photos)) * 1000)
    return statistics.median(samples)


def _optional(name: str) -> ModuleType | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if name == "cv2":
        module.setNumThreads(1)  # the consumers' model runs one thread each; so would their resize
    return module


def measure(rounds: int = 5, repeat: int = 40) -> dict[str, dict[str, float]]:
    """{photo set: {step: CPU ms per image}} for the benchmark's photos and the same at camera size."""
    small = [data for _, data in bench_photos()]
    sets = {"benchmark photos (451x300 to 640x427)": small, "camera size (4032x3024)": camera_photos(small)}
    simplejpeg, cv2 = _optional("simplejpeg"), _optional("cv2")
    results: dict[str, dict[str, float]] = {}
    for label, photos in sets.items():
        passes = repeat if label.startswith("benchmark") else max(1, repeat // 20)
        work = steps(photos, simplejpeg, cv2)
        results[label] = {name: per_image_ms(fn, photos, rounds, passes) for name, fn in work.items()}
    return results


def render(results: dict[str, dict[str, float]]) -> str:
    labels = list(results)
    names = list(dict.fromkeys(name for steps_ in results.values() for name in steps_))
    lines = [
        "| step | " + " | ".join(f"{label}, CPU ms/image" for label in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in names:
        cells = [f"{results[label][name]:.2f}" if name in results[label] else "-" for label in labels]
        lines.append(f"| {name.strip()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=40, help="passes over the small photos per round")
    args = parser.parse_args(argv)
    print(render(measure(args.rounds, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
