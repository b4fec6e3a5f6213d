"""Model-only benchmark: images/s per runtime and batch size, preprocessing cost, memory, start-up time.

Run `python -m benchmarks.model_bench`; each runtime is measured in a fresh child process so its memory and
start-up time are its own. Writes docs/benchmarks/model.md, model.json and model.png.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from inference_consumer.model import ImageClassifier, load_classifier
from inference_consumer.model.preprocessing import preprocess

logger = logging.getLogger(__name__)

RUNTIMES = ("litert", "tensorflow")
BATCH_SIZES = (1, 8, 32)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = PROJECT_ROOT / "docs" / "benchmarks"


def measure_ceiling(
    classifier: ImageClassifier,
    images: Sequence[bytes],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    *,
    runs: int = 7,
    min_images_per_run: int = 64,
) -> dict[str, Any]:
    """Model-only images/s per batch size (preprocessing excluded): warm-up, then the median of `runs`."""
    pixels = np.stack([classifier.preprocess(data) for data in images])
    results: dict[str, Any] = {}
    for batch_size in batch_sizes:
        batch = np.resize(pixels, (batch_size, *pixels.shape[1:]))  # repeats the images to fill the batch
        calls = max(1, -(-min_images_per_run // batch_size))
        for _ in range(2):
            classifier.predict(batch)
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            for _ in range(calls):
                classifier.predict(batch)
            rates.append(calls * batch_size / (time.perf_counter() - started))
        results[str(batch_size)] = {"images_per_s": statistics.median(rates), "runs": rates}
    best = max(results, key=lambda k: results[k]["images_per_s"])
    return {
        "model": classifier.model_name,
        "model_version": classifier.model_version,
        "runtime": classifier.runtime,
        "batch_sizes": results,
        "best_batch_size": int(best),
        "ceiling_images_per_s": results[best]["images_per_s"],
    }


def measure_preprocessing(classifier: ImageClassifier, images: Sequence[bytes], repeats: int = 30) -> float:
    """Median milliseconds to preprocess one image, over all images."""
    times = []
    for data in images:
        classifier.preprocess(data)
        started = time.perf_counter()
        for _ in range(repeats):
            classifier.preprocess(data)
        times.append((time.perf_counter() - started) / repeats * 1000)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include a large parent's peak)."""
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def _worker(args: argparse.Namespace) -> None:
    """One runtime in this fresh process: start-up time, then ceiling, preprocessing and memory."""
    image_dir: Path = args.images
    images = [p.read_bytes() for p in sorted(image_dir.glob("photo-*.jpg"))]
    classifier = load_classifier(runtime=args.worker, cache_dir=args.cache_dir)
    classifier.classify(images[:1])
    # Wall clock from the parent's spawn, so interpreter start-up and imports count too.
    first_result_s = time.time() - args.spawned_at
    first_result_rss_mb = peak_rss_mb()
    if args.first_result_only:
        args.out.write_text(json.dumps({"first_result_s": first_result_s}))
        return
    result = measure_ceiling(classifier, images)
    large = (image_dir / "large-12mp.jpg").read_bytes()
    result |= {
        "first_result_s": first_result_s,
        "peak_rss_after_first_result_mb": first_result_rss_mb,
        "preprocess_ms": measure_preprocessing(classifier, images),
        "preprocess_12mp_ms": measure_preprocessing(classifier, [large], repeats=10),
        "preprocess_12mp_no_draft_ms": _no_draft_ms(classifier, large),
        "peak_rss_mb": peak_rss_mb(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    args.out.write_text(json.dumps(result))


def _no_draft_ms(classifier: ImageClassifier, data: bytes, repeats: int = 10) -> float:
    preprocess(data, classifier.spec, draft=False)
    started = time.perf_counter()
    for _ in range(repeats):
        preprocess(data, classifier.spec, draft=False)
    return (time.perf_counter() - started) / repeats * 1000


def _write_images(image_dir: Path) -> None:
    """The four offline test photos as JPEG files, plus one 12-megapixel JPEG, for the workers to read."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [skimage.data.chelsea(), skimage.data.coffee(), *load_sample_images().images]  # type: ignore[no-untyped-call]
    for index, pixels in enumerate(photos):
        Image.fromarray(pixels).save(image_dir / f"photo-{index}.jpg", quality=90)
    large = Image.fromarray(photos[0]).resize((4032, 3024), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    large.save(buffer, "JPEG", quality=90)
    (image_dir / "large-12mp.jpg").write_bytes(buffer.getvalue())


def _child(args: list[str]) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT_ROOT))
    command = [sys.executable, "-m", "benchmarks.model_bench", *args, "--spawned-at", repr(time.time())]
    subprocess.run(command, check=True, env=env)


def _cold_litert_start(cache_dir: Path, image_dir: Path, out_dir: Path) -> float:
    """Seconds for a fresh process to a first result when the .tflite must be converted first."""
    out = out_dir / "cold.json"
    _child(["--worker", "litert", "--images", str(image_dir), "--cache-dir", str(cache_dir),
            "--out", str(out), "--first-result-only"])  # fmt: skip
    return float(json.loads(out.read_text())["first_result_s"])


def run(runtimes: Sequence[str], output_dir: Path) -> dict[str, Any]:
    """Measure every runtime in its own process and write the report files."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _write_images(work)
        cache_dir = work / "cache"
        report: dict[str, Any] = {"machine": machine_info(), "runtimes": {}}
        if "litert" in runtimes:
            report["litert_cold_first_result_s"] = _cold_litert_start(cache_dir, work, work)
        for runtime in runtimes:
            out = work / f"{runtime}.json"
            _child(["--worker", runtime, "--images", str(work), "--cache-dir", str(cache_dir),
                    "--out", str(out)])  # fmt: skip
            report["runtimes"][runtime] = json.loads(out.read_text())
    report["ceiling_images_per_s"] = max(r["ceiling_images_per_s"] for r in report["runtimes"].values())
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "model.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "model.md").write_text(render_markdown(report))
    _plot(report, output_dir / "model.png")
    return report


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "threads": 2,
    }


def render_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    sizes = list(next(iter(report["runtimes"].values()))["batch_sizes"])
    head = ["runtime", *(f"batch {s} (img/s)" for s in sizes), "preprocess ms/img", "peak RSS",
            "fresh process to first result"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in report["runtimes"].items():
        rates = [f"{r['batch_sizes'][s]['images_per_s']:.0f}" for s in sizes]
        cells = [
            name,
            *rates,
            f"{r['preprocess_ms']:.2f}",
            f"{r['peak_rss_mb']:.0f} MB",
            f"{r['first_result_s']:.2f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The report page: machine, table, ceiling and notes."""
    m = report["machine"]
    lite = report["runtimes"].get("litert", {})
    notes = [
        f"- Implied model-only ceiling: **{report['ceiling_images_per_s']:.0f} images/s** "
        "(best runtime and batch size; the pipeline cannot beat this on this machine).",
    ]
    if lite:
        notes += [
            f"- LiteRT with no cached .tflite (converts in a child process first): "
            f"{report['litert_cold_first_result_s']:.1f} s to the first result.",
            f"- Preprocessing a 12-megapixel JPEG: {lite['preprocess_12mp_ms']:.1f} ms with libjpeg draft "
            f"decoding, {lite['preprocess_12mp_no_draft_ms']:.1f} ms without.",
            f"- TensorFlow imported by the LiteRT process: {lite['tensorflow_imported']}.",
            f"- LiteRT peak RSS after its first (single-image) result: "
            f"{lite['peak_rss_after_first_result_mb']:.0f} MB; the table's peak comes from the batch-32 "
            "runs, whose intermediate tensors LiteRT allocates for the whole batch.",
        ]
    return "\n".join([
        "# Model benchmark (EfficientNet-Lite0)",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"{m['threads']} inference threads, by `python -m benchmarks.model_bench`.",
        "Images/s are model only (preprocessing excluded), median of 7 timed runs after a warm-up; each "
        "runtime ran in a fresh process, so peak RSS (VmHWM) and start-up time are its own.",
        "",
        render_table(report),
        "",
        *notes,
        "",
        "![images per second by batch size](model.png)",
        "",
    ])  # fmt: skip


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in report["runtimes"].items():
        sizes = [int(s) for s in r["batch_sizes"]]
        ax.plot(sizes, [r["batch_sizes"][str(s)]["images_per_s"] for s in sizes], marker="o", label=name)
    ax.set(xscale="log", xlabel="batch size", ylabel="images/s (model only)", ylim=(0, None),
           title=f"EfficientNet-Lite0, {report['machine']['cores']} cores")  # fmt: skip
    ax.set_xticks([1, 8, 32], ["1", "8", "32"])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments: no arguments runs the whole benchmark; --worker is the per-runtime child."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--first-result-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.worker:
        _worker(args)
        return
    report = run(args.runtimes, args.output_dir)
    print(render_table(report))
    print(f"model-only ceiling: {report['ceiling_images_per_s']:.0f} images/s; wrote {args.output_dir}")


if __name__ == "__main__":
    main()
