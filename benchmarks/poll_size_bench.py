"""POLL_MAX_IMAGES 4 against 16 (images per poll and per transaction; model calls stay BATCH_MAX_SIZE=4),
alternating in one run, exactly-once, `make run`'s two consumers.

`.venv/bin/python -m benchmarks.poll_size_bench [--rounds 2]` (~3 min a round): for each size a fresh system,
then saturation (closed loop, as `make bench`), half of it and 0.9x of it (open loop); prints one JSON line
per system with the completed rates, CPU per image by process (the broker's included) and round trips. The
figures and what they decided are in docs/benchmarks.md (2026-12-03).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.pipeline_bench import (
    DEFAULT_CONFIG,
    FIRST_WARM_UP_S,
    SATURATING_USERS,
    WARM_UP_S,
    CpuMeter,
    bench_photos,
    run_level,
    start_system,
    warm_up,
)
from kafka_local.provision import provide_broker

SIZES = (4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    photos = bench_photos()
    first = True
    with tempfile.TemporaryDirectory(prefix="bench-poll-size-") as tmp:
        work = Path(tmp)
        with provide_broker(work / "kafka", try_docker=False) as (bootstrap, local):
            broker_pid = getattr(getattr(local, "_process", None), "pid", None)
            for n in range(args.rounds):
                for size in SIZES if n % 2 == 0 else SIZES[::-1]:
                    system, _ = start_system(
                        bootstrap, work, DEFAULT_CONFIG, work, {"POLL_MAX_IMAGES": str(size)}
                    )
                    try:
                        warm_up(system, photos, FIRST_WARM_UP_S if first else WARM_UP_S)
                        first = False
                        meter = CpuMeter(system, broker_pid)
                        saturated = run_level(
                            system, meter, photos, 0, 15, 4, closed_loop_clients=SATURATING_USERS
                        )
                        rate = saturated["completed_images_per_s"]
                        levels = {"saturated": saturated} | {
                            f"{share}x": run_level(system, meter, photos, rate * share, 15, 4)
                            for share in (0.5, 0.9)
                        }
                    finally:
                        system.stop()
                    print(
                        json.dumps(
                            {
                                "round": n + 1,
                                "poll_max_images": size,
                                **{
                                    name: {
                                        "completed_images_per_s": round(level["completed_images_per_s"], 1),
                                        "cpu_ms_per_image": {
                                            k: round(v * 1000, 2) for k, v in level["cpu_s_per_image"].items()
                                        },
                                        "round_trip_ms": level["round_trip_ms"],
                                    }
                                    for name, level in levels.items()
                                },
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
