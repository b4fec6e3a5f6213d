"""`make bench`: the pipeline end to end against the model's own ceiling, measured in the same run.

1. The ceiling: the default model alone in this process, same runtime and threads as the consumers, same photos.
2. Scaling: saturated throughput with 1, 2 and 4 consumers (and threads per consumer).
3. A load sweep on the best configuration, from a quarter of saturation to twice it: throughput, round-trip and
   per-hop latency percentiles, shed and failed requests, and CPU-seconds per image of every process.
Writes docs/benchmarks/pipeline.md, pipeline.json and plots (`--smoke`: a short run into a temporary folder,
for CI, with no timing assertion).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

from benchmarks.loadgen import LoadResult, run_closed_loop, run_open_loop
from benchmarks.model_bench import machine_info, measure_ceiling, measure_preprocessing
from kafka_local import free_port
from kafka_local.provision import provide_broker
from launcher.system import System, isolated_env
from pipeline_core.logs import configure_logging

logger = logging.getLogger("benchmarks.pipeline")
OUTPUT_DIR = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


@dataclass(frozen=True)
class Config:
    """One way to run the consumers on this machine."""

    consumers: int
    threads: int

    @property
    def name(self) -> str:
        consumers = f"{self.consumers} consumer{'s' if self.consumers > 1 else ''}"
        return f"{consumers} x {self.threads} thread{'s' if self.threads > 1 else ''}"


ORIGINAL_RPS = {"one model service": 5.8, "two model services": 9.7}
DEFAULT_CONFIG = Config(2, 1)  # what `make run` starts on 2 cores: 2 consumers, the cores divided among them
CONSUMER_BATCH = 4  # the consumers' BATCH_MAX_SIZE default, which a saturated consumer's polls fill
# Closed-loop users for saturation, each keeping one 4-image upload in flight: 64 images queue, enough that no
# consumer runs dry between uploads and far below the API's admission limit (MAX_BACKLOG_IMAGES=256).
SATURATING_USERS = 16
# The first system's warm-up also warms the broker's JIT compiler (seen using a third of a core for its first
# half minute), which a long-running broker has long finished; later systems reuse the warm broker.
FIRST_WARM_UP_S, WARM_UP_S = 25.0, 5.0
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")
# Every Kafka client library with each processing guarantee, at saturation, in one run. Each client runs once early
# and once late (positions 1 and 4, 2 and 3), so a machine that speeds up or slows down mid-run favours neither;
# `make bench-guarantees` alternates the guarantees over rounds for their own comparison.
CLIENT_GUARANTEE_ORDER = (
    ("kafka-python", "exactly-once"),
    ("confluent-kafka", "exactly-once"),
    ("confluent-kafka", "at-least-once"),
    ("kafka-python", "at-least-once"),
)


def bench_photos() -> list[tuple[str, bytes]]:
    """The four offline photos as JPEG files, the same bytes for the ceiling and the pipeline."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = {"chelsea": data.chelsea(), "coffee": data.coffee()}
    samples = load_sample_images()
    arrays |= {Path(n).stem: a for n, a in zip(samples.filenames, samples.images, strict=True)}
    photos = []
    for name, array in arrays.items():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        photos.append((f"{name}.jpg", buffer.getvalue()))
    return photos


def measure_model(
    photos: Sequence[tuple[str, bytes]], threads: int, quick: bool, consumer: Config | None = None
) -> dict[str, Any]:
    """The model-only ceiling with `threads` in this process; with `consumer`, also the model's own CPU-seconds
    per image as the consumers run it (their threads, their batch size): the yardstick for the pipeline's CPU."""
    from inference_consumer.model import load_classifier
    from inference_consumer.settings import DEFAULT_MODEL_CACHE

    classifier = load_classifier(cache_dir=DEFAULT_MODEL_CACHE, num_threads=threads)
    images = [data for _, data in photos]
    ceiling = measure_ceiling(classifier, images, (1, 4, 16), runs=3 if quick else 7)
    result = ceiling | {
        "preprocess_ms_per_image": measure_preprocessing(classifier, images, repeats=10),
        "threads": threads,
    }
    if consumer is not None:
        as_consumer = load_classifier(cache_dir=DEFAULT_MODEL_CACHE, num_threads=consumer.threads)
        result["consumer_threads"] = consumer.threads
        result["model_cpu_ms_per_image"] = {
            str(batch): model_cpu_ms_per_image(as_consumer, images, batch, 40 if quick else 200)
            for batch in (1, CONSUMER_BATCH)
        }
    return result


def model_cpu_ms_per_image(classifier: Any, images: Sequence[bytes], batch: int, count: int) -> float:
    """CPU-milliseconds this process spends per image on `classifier.predict` at `batch` (after a warm-up)."""
    import numpy as np

    rows = np.stack([classifier.preprocess(d) for d in images])
    batch_rows = np.resize(rows, (batch, *rows.shape[1:]))
    classifier.predict(batch_rows)
    calls = max(1, count // batch)
    cpu_before = psutil.Process().cpu_times()
    for _ in range(calls):
        classifier.predict(batch_rows)
    cpu_after = psutil.Process().cpu_times()
    spent = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return 1000 * spent / (calls * batch)


class CpuMeter:
    """CPU-seconds of each process of the system (and of this load generator) over an interval."""

    def __init__(self, system: System, broker_pid: int | None) -> None:
        self.processes: dict[str, psutil.Process] = {
            name: psutil.Process(s.process.pid) for name, s in system.services.items() if s.process
        }
        if broker_pid is not None:
            self.processes["broker"] = psutil.Process(broker_pid)
        self.processes["load generator"] = psutil.Process()
        self._start: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    def _cpu(self) -> dict[str, float]:
        result = {}
        for name, process in self.processes.items():
            times = process.cpu_times()
            result[name] = times.user + times.system
            rss = process.memory_info().rss / 2**20
            self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), rss)
        return result

    def start(self) -> None:
        self._start = self._cpu()

    def stop(self) -> dict[str, float]:
        end = self._cpu()
        return {name: end[name] - self._start[name] for name in end}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summarise(load: LoadResult, cpu: dict[str, float]) -> dict[str, Any]:
    """Throughput, latency percentiles overall and per hop, shed and failed counts, CPU per image."""
    done = load.completed
    trips = [j.round_trip_s for j in done if j.round_trip_s is not None]
    hops: dict[str, list[float]] = {}
    for job in done:
        for hop, seconds in job.hops_s().items():
            hops.setdefault(hop, []).append(seconds)
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {
        "offered_images_per_s": load.offered_images_per_s,
        "accepted": len(load.jobs),
        "completed": len(done),
        "failed_results": sum(1 for j in done if j.status != "done"),
        "completed_images_per_s": len(done) / load.wall_s if load.wall_s else 0.0,
        "rejected": load.rejected,
        "errors": len(load.errors),
        "error_samples": load.errors[:5],
        "timed_out": load.timed_out,
        "round_trip_ms": {f"p{q}": ms(percentile(trips, q)) for q in (50, 95, 99)}
        | {"max": ms(max(trips, default=None))},
        "hops_ms": {
            hop: {"p50": ms(percentile(v, 50)), "p99": ms(percentile(v, 99))} for hop, v in hops.items()
        },
        "cpu_s_per_image": {name: (seconds / len(done) if done else None) for name, seconds in cpu.items()},
        "wall_s": load.wall_s,
    }


def run_level(
    system: System,
    meter: CpuMeter,
    photos: Sequence[tuple[str, bytes]],
    rate: float,
    duration_s: float,
    files_per_request: int,
    closed_loop_clients: int = 0,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Offer one load level (open loop at `rate`, or `closed_loop_clients` users) and summarise it;
    with `profile_dir`, every process is profiled meanwhile (see `start_profilers`)."""
    broker_pid = meter.processes["broker"].pid if "broker" in meter.processes else None
    profilers = start_profilers(system, profile_dir, duration_s, broker_pid) if profile_dir else []
    meter.start()
    if closed_loop_clients:
        load = asyncio.run(
            run_closed_loop(
                system.api_url, system.sink_url, photos, closed_loop_clients, duration_s, files_per_request
            )
        )
        rate = load.offered_images_per_s
    else:
        load = asyncio.run(
            run_open_loop(system.api_url, system.sink_url, photos, rate, duration_s, files_per_request)
        )
    summary = summarise(load, meter.stop())
    for profiler in profilers:
        profiler.wait(timeout=60)
    if profile_dir:
        strip_local_paths(profile_dir)
    logger.info(
        "offered %.0f img/s: completed %.1f img/s, p50 %s ms, p99 %s ms, shed %d, errors %d, timed out %d",
        rate,
        summary["completed_images_per_s"],
        summary["round_trip_ms"]["p50"],
        summary["round_trip_ms"]["p99"],
        summary["rejected"],
        summary["errors"],
        summary["timed_out"],
    )
    return summary


def start_profilers(
    system: System, profile_dir: Path, duration_s: float, broker_pid: int | None
) -> list[subprocess.Popen[bytes]]:
    """Over the coming level: py-spy flame graphs of the API, the first consumer, the sink and this load
    generator, and a Java Flight Recorder profile of the broker (summarised by `summarise_broker_profile`)."""
    import os
    import shutil

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    profile_dir.mkdir(parents=True, exist_ok=True)
    seconds = max(1, int(duration_s) - 2)
    pids = {name: system.services[name].process for name in ("api", "inference-1", "sink")}
    targets = {name: process.pid for name, process in pids.items() if process is not None}
    targets["load-generator"] = os.getpid()
    profilers = [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "100",
                "--nonblocking",
                "--output",
                str(profile_dir / f"{name}.svg"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    ]
    jcmd = shutil.which("jcmd")
    if broker_pid is not None and jcmd:
        profilers.append(
            subprocess.Popen(
                [
                    jcmd,
                    str(broker_pid),
                    "JFR.start",
                    "name=bench",
                    "settings=profile",
                    f"duration={seconds}s",
                    f"filename={profile_dir / 'broker.jfr'}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return profilers


def strip_local_paths(profile_dir: Path) -> None:
    """py-spy writes its command line, with this machine's paths, into each flame graph's title: keep the
    committed graphs free of them (paths relative to the project, the tool by its name)."""
    root = str(Path(__file__).resolve().parents[1]) + "/"
    for svg in profile_dir.glob("*.svg"):
        text = svg.read_text()
        cleaned = re.sub(r"[^\s>\"]*/py-spy record", "py-spy record", text).replace(root, "")
        if cleaned != text:
            svg.write_text(cleaned)


def summarise_broker_profile(profile_dir: Path, top: int = 25) -> str | None:
    """broker.jfr's CPU samples as text: share by thread and by method (self and inclusive)."""
    import re
    import shutil
    from collections import Counter

    jfr, recording = shutil.which("jfr"), profile_dir / "broker.jfr"
    # JFR writes the file when the recording's duration ends: wait until it exists and stops growing.
    size = -1
    for _ in range(60):
        current = recording.stat().st_size if recording.exists() else -1
        if current > 0 and current == size:
            break
        size = current
        time.sleep(1)
    if jfr is None or size <= 0:
        return None
    printed = subprocess.run(
        [jfr, "print", "--events", "jdk.ExecutionSample", str(recording)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    ).stdout
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for event in printed.split("jdk.ExecutionSample")[1:]:
        frames = [f.split("(")[0] for f in re.findall(r"^\s+([\w.$<>]+\(.*?\))\s+line:", event, re.M)]
        if not frames:
            continue
        samples += 1
        thread = re.search(r'sampledThread = "([^"]+)"', event)
        threads[re.sub(r"-?\d+", "", thread.group(1)) if thread else "?"] += 1
        own[frames[0]] += 1
        inclusive.update(set(frames))
    recording.unlink()
    if not samples:
        return None
    share = lambda n: f"{100 * n / samples:5.1f}%"  # noqa: E731
    lines = [f"Broker CPU samples (Java Flight Recorder): {samples}", "", "By thread (numbers removed):"]
    lines += [f"{share(n)}  {name}" for name, n in threads.most_common(10)]
    lines += ["", "Self time by method:"] + [f"{share(n)}  {name}" for name, n in own.most_common(top)]
    lines += ["", "Inclusive time by method:"]
    lines += [f"{share(n)}  {name}" for name, n in inclusive.most_common(2 * top)]
    text = "\n".join(lines) + "\n"
    (profile_dir / "broker.txt").write_text(text)
    return text


def start_system(
    bootstrap: str, work: Path, config: Config, log_dir: Path, extra_env: dict[str, str] | None = None
) -> tuple[System, float]:
    """A whole system with `config`'s consumers; returns it and its seconds from launch to ready."""
    name = f"bench-{config.consumers}x{config.threads}-{time.time_ns()}"
    env = (
        isolated_env(name)
        | {"MODEL_THREADS": str(config.threads), "LOG_LEVEL": "WARNING"}
        | (extra_env or {})
    )
    log = (log_dir / f"{name}.log").open("w")
    system = System(bootstrap, work / name, free_port(), free_port(), config.consumers, env=env, out=log)
    started = time.monotonic()
    system.start()
    return system, time.monotonic() - started


def warm_up(system: System, photos: Sequence[tuple[str, bytes]], seconds: float) -> None:
    """Images through every consumer for `seconds`, so start-up costs stay out of the measurements."""
    load = asyncio.run(run_open_loop(system.api_url, system.sink_url, photos, 40, seconds, 4))
    if load.errors or load.timed_out:
        raise RuntimeError(f"warm-up failed: {load.errors[:3]} timed out {load.timed_out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a short run for CI, written to a temporary folder"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help=f"where to write results (default {OUTPUT_DIR})"
    )
    parser.add_argument("--level-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would load the load generator
    quick = args.smoke
    output = args.output or (Path(tempfile.mkdtemp(prefix="bench-")) if quick else OUTPUT_DIR)
    output.mkdir(parents=True, exist_ok=True)
    level_s = args.level_seconds or (3.0 if quick else 15.0)
    photos = bench_photos()
    report: dict[str, Any] = {"machine": machine_info(), "level_seconds": level_s, "smoke": quick}

    configs = [Config(1, 2)] if quick else [Config(1, 2), Config(2, 1), Config(2, 2), Config(4, 1)]
    # The sweep runs what `make run` runs (2 consumers sharing the cores), at its own saturation.
    config = configs[0] if quick else DEFAULT_CONFIG
    report["model"] = measure_model(photos, threads=2, quick=quick, consumer=config)
    report["saturating_users"] = SATURATING_USERS
    ceiling = report["model"]["ceiling_images_per_s"]
    logger.info("model-only ceiling: %.0f images/s", ceiling)
    # The broker (on the stack) stops before its data folder is removed: it writes there until it exits.
    with tempfile.TemporaryDirectory(prefix="bench-") as work_dir, ExitStack() as stack:
        work = Path(work_dir)
        broker_started = time.monotonic()
        bootstrap, local = stack.enter_context(provide_broker(work / "kafka", try_docker=False))
        report["broker_start_s"] = time.monotonic() - broker_started
        broker_pid = local._process.pid if local is not None and local._process is not None else None
        report["scaling"] = []
        best: tuple[float, Config] | None = None
        for n, scaled in enumerate(configs):
            system, ready_s = start_system(bootstrap, work, scaled, work)
            try:
                warm_up(system, photos, 2.0 if quick else FIRST_WARM_UP_S if n == 0 else WARM_UP_S)
                meter = CpuMeter(system, broker_pid)
                level = run_level(system, meter, photos, 0, level_s, 4, closed_loop_clients=SATURATING_USERS)
                level["config"] = scaled.name
                level["ready_s"] = ready_s
                level["peak_rss_mb"] = dict(meter.peak_rss_mb)
                report["scaling"].append(level)
                if best is None or level["completed_images_per_s"] > best[0]:
                    best = (level["completed_images_per_s"], scaled)
            finally:
                system.stop()
        assert best is not None
        # Both Kafka client libraries with both guarantees, each in a system of its own as `make run` starts it,
        # at saturation: the figures behind KAFKA_CLIENT's default and what exactly-once costs (docs/benchmarks.md).
        report["clients"] = []
        for client, guarantee in CLIENT_GUARANTEE_ORDER:
            env = {"KAFKA_CLIENT": client, "PROCESSING_GUARANTEE": guarantee}
            system, _ready_s = start_system(bootstrap, work, config, work, env)
            try:
                warm_up(system, photos, 2.0 if quick else WARM_UP_S)
                meter = CpuMeter(system, broker_pid)
                level = run_level(system, meter, photos, 0, level_s, 4, closed_loop_clients=SATURATING_USERS)
                level["kafka_client"] = client
                level["processing_guarantee"] = guarantee
                report["clients"].append(level)
            finally:
                system.stop()
        saturation = next(
            lv["completed_images_per_s"] for lv in report["scaling"] if lv["config"] == config.name
        )
        report["best_config"] = config.name
        report["as_make_run"] = config == DEFAULT_CONFIG
        report["best_scaling"] = {"config": best[1].name, "images_per_s": best[0]}
        report["saturation_images_per_s"] = saturation
        system, ready_s = start_system(bootstrap, work, config, work)
        report["ready_s"] = ready_s
        try:
            warm_up(system, photos, 2.0 if quick else WARM_UP_S)
            meter = CpuMeter(system, broker_pid)
            fractions = (0.5, 2.0) if quick else (0.25, 0.5, 0.75, 1.0, 1.25, 2.0)
            report["sweep"] = []
            for fraction in fractions:
                level = run_level(system, meter, photos, saturation * fraction, level_s, 4)
                level["fraction_of_saturation"] = fraction
                report["sweep"].append(level)
            report["peak_rss_mb"] = dict(meter.peak_rss_mb)
            if not quick:
                # Profilers take CPU from the system they watch, so they get a level of their own, kept out of
                # the tables above.
                profiles = output / "profiles"
                report["profiled_level"] = run_level(
                    system, meter, photos, saturation, level_s, 4, profile_dir=profiles
                )
                report["broker_profile"] = summarise_broker_profile(profiles)
        finally:
            system.stop()
    report["model_after"] = measure_model(photos, threads=2, quick=True)
    write_report(report, output)
    return 0


def write_report(report: dict[str, Any], output: Path) -> None:
    """pipeline.json, pipeline.md and the plots."""
    from benchmarks.report import render_markdown, render_plots

    (output / "pipeline.json").write_text(json.dumps(report, indent=2))
    render_plots(report, output)
    (output / "pipeline.md").write_text(render_markdown(report))
    print(render_markdown(report))
    logger.info("wrote %s", output)


if __name__ == "__main__":
    sys.exit(main())
