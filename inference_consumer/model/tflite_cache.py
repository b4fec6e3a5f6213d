"""A cache of converted .tflite files, keyed by the sha256 of the model they came from."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference_consumer.model.sources import ModelSource
from pipeline_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Bump when conversion or the EfficientNet-Lite0 graph changes, so older cached files are not reused.
CONVERSION_VERSION = 1
_CONVERSION_TIMEOUT_S = 900
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cached_tflite_path(source: ModelSource, cache_dir: Path) -> Path:
    """Where the .tflite for this exact model content lives (or will live)."""
    return cache_dir / f"{source.kind}-{source.sha256}-v{CONVERSION_VERSION}.tflite"


def ensure_tflite(source: ModelSource, cache_dir: Path) -> tuple[Path, bool]:
    """The cached .tflite for a model, converting it first if absent; also says whether it was converted."""
    path = cached_tflite_path(source, cache_dir)
    if path.is_file():
        logger.info("using cached %s", path)
        return path, False
    convert_into_cache(source, path)
    return path, True


def convert_into_cache(source: ModelSource, path: Path) -> None:
    """Convert in a child process (TensorFlow stays out of this one) and move the file in atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    except OSError as e:
        raise ModelLoadError(f"model cache directory {path.parent} is not writable: {e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    started = time.perf_counter()
    logger.info("converting %s (%s) to %s", source.path, source.kind, path)
    try:
        _run_converter(source, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("converted %s in %.1f s", path.name, time.perf_counter() - started)


def _run_converter(source: ModelSource, output: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "inference_consumer.model.conversion",
        "--kind",
        source.kind,
        "--source",
        str(source.path),
        "--sha256",
        source.sha256,
        "--output",
        str(output),
    ]
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    )
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=_CONVERSION_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelLoadError(f"{source.path}: conversion to .tflite did not finish ({e})") from e
    if result.returncode != 0 or output.stat().st_size == 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise ModelLoadError(
            f"{source.path}: conversion to .tflite failed (exit {result.returncode}): {tail}"
        )
    logger.debug("converter output: %s", result.stderr)
