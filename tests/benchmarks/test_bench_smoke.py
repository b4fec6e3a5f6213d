"""The benchmark keeps working: a short `make bench` run (no timing assertion; timings vary by machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_smoke_benchmark_runs_end_to_end_and_writes_its_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline_bench", "--smoke", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert report["model"]["ceiling_images_per_s"] > 0
    assert {(level["kafka_client"], level["processing_guarantee"]) for level in report["clients"]} == {
        (client, guarantee)
        for client in ("kafka-python", "confluent-kafka")
        for guarantee in ("exactly-once", "at-least-once")
    }, "both clients with both guarantees, in one run"
    for level in report["sweep"] + report["clients"]:
        assert level["completed"] > 0 and level["errors"] == 0, level
        assert level["completed"] + level["timed_out"] == level["accepted"], (
            "every accepted image accounted for"
        )
    page = (tmp_path / "pipeline.md").read_text()
    assert "| offered img/s |" in page and "| confluent-kafka | at-least-once |" in page
    assert "exactly-once / at-least-once with confluent-kafka" in page
    assert (tmp_path / "pipeline.png").stat().st_size > 10_000
    assert (tmp_path / "pipeline-cpu.png").stat().st_size > 10_000
