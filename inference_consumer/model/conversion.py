"""Convert a Keras model or SavedModel to .tflite; run as a child process, so callers never import TF."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import get_args

import tensorflow as tf

from inference_consumer.model.keras_models import load_keras_model
from inference_consumer.model.sources import ModelSource, SourceKind
from pipeline_core.errors import ModelLoadError

logger = logging.getLogger(__name__)


def convert_to_tflite(source: ModelSource) -> bytes:
    """The float32 .tflite flatbuffer for a model, keeping a dynamic batch dimension."""
    if source.kind == "saved_model":
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source.path))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(source))
    try:
        # The converter prints its captured tensors to stdout; the parent only reads stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return bytes(converter.convert())
    except Exception as e:  # the converter raises many unrelated types, all meaning "cannot convert"
        raise ModelLoadError(f"{source.path}: conversion to .tflite failed ({type(e).__name__}: {e})") from e


def main(argv: list[str] | None = None) -> int:
    """Entry point of the conversion child: write the .tflite to --output, exit 2 with a reason on failure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", required=True, choices=get_args(SourceKind))
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    source = ModelSource(args.kind, args.kind, args.source, args.sha256)
    try:
        flatbuffer = convert_to_tflite(source)
    except ModelLoadError as e:
        print(f"ModelLoadError: {e}", file=sys.stderr)
        return 2
    with args.output.open("wb") as f:
        f.write(flatbuffer)
        f.flush()
        os.fsync(f.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
