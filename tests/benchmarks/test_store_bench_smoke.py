"""The store benchmark keeps working: a `--smoke` run (~20 s) on the tests' broker, into a temporary folder.
No timing is asserted; timings vary by machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import store_bench

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_smoke_store_benchmark_measures_every_part_and_writes_its_report(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}  # the sink's topics are its own
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.store_bench", "--smoke", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "store.json").read_text())
    assert report["smoke"] is True and report["prediction_record_bytes"] > 0
    for store in ("postgres", "sqlite"):
        runs = report[store]["writes"]
        assert [r["batch_size"] for r in runs] == list(store_bench.BATCH_SIZES)
        assert all(r["results"] >= r["batch_size"] and r["results_per_s"] > 0 for r in runs), runs
    notify = report["postgres"]["notify"]
    assert [r["batch_size"] for r in notify] == list(store_bench.NOTIFY_BATCH_SIZES)
    for run in notify:
        assert run["listener_caught_up"], run  # the second replica got every result the first stored
        assert run["notifications_received"] > 0 and run["listener_results"] > 0
    assert report["postgres"]["feed_read"]["results"] > 0
    sse = report["sse"]
    assert [level["streams"] for level in sse["levels"]] == list(store_bench.SMOKE_SSE_STREAMS)
    assert sse["levels"][-1]["growth_mb"] > 0  # open streams cost the sink memory
    page = (tmp_path / "store.md").read_text()
    assert "## LISTEN/NOTIFY" in page and "| open streams |" in page
