"""Does LiteRT's int8 quantisation of EfficientNet-Lite0 hold its answers? Top-1 agreement with float32 and speed.

`.venv/bin/python -m benchmarks.int8_agreement` (about 2 minutes): converts Lite0 three ways (float32 as served;
dynamic-range, int8 weights; full int8, calibrated on every other input, float input and output), runs each on
the real photos that ship with scikit-image and scikit-learn, four variants of each (as is, mirrored, cropped to
the centre, turned 10 degrees), and prints each conversion's size, top-1 agreement with float32 (also on the
inputs not used to calibrate) and the median time per image of five interleaved passes, batches of 4, 2 threads.
The results are in docs/model.md.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry")
PHOTOS += ("logo", "retina", "rocket")


def photos() -> dict[str, bytes]:
    """The real photos of scikit-image (those above) and scikit-learn (china, flower), as JPEG bytes."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = {name: getattr(skimage.data, name)() for name in PHOTOS}
    samples = load_sample_images()
    arrays |= {Path(n).stem: a for n, a in zip(samples.filenames, samples.images, strict=True)}
    return {name: _jpeg(Image.fromarray(a.astype(np.uint8)).convert("RGB")) for name, a in arrays.items()}


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def variants(data: bytes) -> list[bytes]:
    """The photo as is, mirrored, cropped to its centre and turned by 10 degrees."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    return [
        _jpeg(image),
        _jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        _jpeg(image.crop((w // 8, h // 8, w * 7 // 8, h * 7 // 8))),
        _jpeg(image.rotate(10)),
    ]


def main() -> None:
    import tensorflow as tf

    from inference_consumer.model.keras_models import load_keras_model
    from inference_consumer.model.litert_runtime import LiteRTRuntime
    from inference_consumer.model.preprocessing import EFFICIENTNET_LITE0_SPEC, preprocess
    from inference_consumer.model.sources import resolve_source

    inputs = np.stack(
        [preprocess(v, EFFICIENTNET_LITE0_SPEC) for _, d in sorted(photos().items()) for v in variants(d)]
    ).astype(np.float32)
    calibration = inputs[::2]
    model = load_keras_model(resolve_source("efficientnet-lite0", None))

    def convert(mode: str) -> bytes:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":

            def representative() -> Iterator[list[np.ndarray]]:
                for x in calibration:
                    yield [x[None]]

            converter.representative_dataset = representative
        return bytes(converter.convert())

    out = Path(tempfile.mkdtemp())
    runtimes, sizes = {}, {}
    for mode in ("float32", "dynamic-range", "int8"):
        flatbuffer = convert(mode)
        sizes[mode] = len(flatbuffer)
        path = out / f"lite0-{mode}.tflite"
        path.write_bytes(flatbuffer)
        runtimes[mode] = LiteRTRuntime(path, 2)

    def run(runtime: LiteRTRuntime) -> np.ndarray:
        return np.concatenate([runtime.predict(inputs[i : i + 4]) for i in range(0, len(inputs), 4)])

    scores = {mode: run(rt) for mode, rt in runtimes.items()}  # also the warm-up
    per_image: dict[str, list[float]] = {mode: [] for mode in runtimes}
    for _ in range(5):
        for mode, runtime in runtimes.items():
            started = time.perf_counter()
            run(runtime)
            per_image[mode].append((time.perf_counter() - started) * 1000 / len(inputs))
    reference = scores["float32"].argmax(1)
    print(f"{len(inputs)} inputs ({len(inputs) // 4} photos x 4 variants)")
    for mode in runtimes:
        top1 = scores[mode].argmax(1)
        agree = int((top1 == reference).sum())
        held_out = float((top1[1::2] == reference[1::2]).mean())
        print(
            f"{mode:14s} {sizes[mode] / 1e6:5.1f} MB  top-1 agreement {agree}/{len(inputs)} "
            f"({agree / len(inputs):.1%}; not calibrated on: {held_out:.1%})  "
            f"{np.median(per_image[mode]):.1f} ms/image"
        )


if __name__ == "__main__":
    main()
