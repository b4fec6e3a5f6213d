"""`make bench-guarantees`: what exactly-once costs against at-least-once, measured in one run.

The make-run configuration (2 consumers sharing the cores) with each PROCESSING_GUARANTEE in turn, alternating
over `--rounds` rounds so that a machine that slows down mid-run weighs on both: saturated throughput (closed
loop, as `make bench`), then round-trip p50/p99 at half of that guarantee's saturation (open loop). Writes
docs/benchmarks/guarantees.md and guarantees.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.model_bench import machine_info
from benchmarks.pipeline_bench import (
    DEFAULT_CONFIG,
    FIRST_WARM_UP_S,
    OUTPUT_DIR,
    SATURATING_USERS,
    WARM_UP_S,
    CpuMeter,
    bench_photos,
    run_level,
    start_system,
    warm_up,
)
from kafka_local.provision import provide_broker
from pipeline_core.logs import configure_logging

logger = logging.getLogger("benchmarks.guarantees")
GUARANTEES = ("exactly-once", "at-least-once")


def measure(
    bootstrap: str, work: Path, guarantee: str, photos: Any, level_s: float, warm_s: float
) -> dict[str, Any]:
    """Saturation, then half of it, for one guarantee on a fresh system."""
    system, ready_s = start_system(bootstrap, work, DEFAULT_CONFIG, work, {"PROCESSING_GUARANTEE": guarantee})
    try:
        warm_up(system, photos, warm_s)
        meter = CpuMeter(system, None)
        saturated = run_level(system, meter, photos, 0, level_s, 4, closed_loop_clients=SATURATING_USERS)
        rate = saturated["completed_images_per_s"]
        half = run_level(system, meter, photos, rate * 0.5, level_s, 4)
    finally:
        system.stop()
    return {
        "guarantee": guarantee,
        "ready_s": round(ready_s, 1),
        "saturated_images_per_s": rate,
        "half_load_images_per_s": half["completed_images_per_s"],
        "half_load_round_trip_ms": half["round_trip_ms"],
        "half_load_errors": half["errors"],
        "saturated_cpu_s_per_image": saturated["cpu_s_per_image"],
    }


def render(report: dict[str, Any]) -> str:
    """The markdown page: every run, then the medians side by side."""
    m = report["machine"]
    lines = [
        "# Exactly-once against at-least-once",
        "",
        f"Measured {report['date']} on {m['cores']} cores ({m['cpu']}, Python {m['python']}), with "
        f"`{report['command']}`: the make-run configuration (2 consumers x 1 model thread), "
        f"{report['level_seconds']:.0f} s per level, the two guarantees alternating over {report['rounds']} rounds.",
        "",
        "| round | guarantee | saturated img/s | half load img/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        rt = run["half_load_round_trip_ms"]
        lines.append(
            f"| {run['round']} | {run['guarantee']} | {run['saturated_images_per_s']:.1f} | "
            f"{run['half_load_images_per_s']:.1f} | {rt['p50']} | {rt['p99']} | {run['half_load_errors']} |"
        )
    lines += ["", "| median | saturated img/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for guarantee, med in report["medians"].items():
        lines.append(f"| {guarantee} | {med['saturated']:.1f} | {med['p50']:.0f} | {med['p99']:.0f} |")
    ratio = report["exactly_once_throughput_ratio"]
    lines += ["", f"Exactly-once throughput / at-least-once throughput: **{ratio:.2f}** (medians).", ""]
    return "\n".join(lines)


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for guarantee in GUARANTEES:
        mine = [r for r in runs if r["guarantee"] == guarantee]
        out[guarantee] = {
            "saturated": statistics.median(r["saturated_images_per_s"] for r in mine),
            "p50": statistics.median(r["half_load_round_trip_ms"]["p50"] or 0 for r in mine),
            "p99": statistics.median(r["half_load_round_trip_ms"]["p99"] or 0 for r in mine),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--level-seconds", type=float, default=15.0)
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    photos = bench_photos()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-guarantees-") as work_dir:
        work = Path(work_dir)
        with provide_broker(work / "kafka", try_docker=False) as (bootstrap, _local):
            for n in range(args.rounds):
                order = GUARANTEES if n % 2 == 0 else GUARANTEES[::-1]
                for guarantee in order:
                    warm = FIRST_WARM_UP_S if not runs else WARM_UP_S
                    run = measure(bootstrap, work, guarantee, photos, args.level_seconds, warm)
                    runs.append(run | {"round": n + 1})
                    logger.info("%s", json.dumps(runs[-1]))
    med = medians(runs)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "make bench-guarantees",
        "machine": machine_info(),
        "level_seconds": args.level_seconds,
        "rounds": args.rounds,
        "runs": runs,
        "medians": med,
        "exactly_once_throughput_ratio": med["exactly-once"]["saturated"] / med["at-least-once"]["saturated"],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "guarantees.json").write_text(json.dumps(report, indent=2))
    (args.output / "guarantees.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
