"""The JSON Schemas of the records the pipeline writes as JSON, published for downstream consumers.

A consumer of the predictions topic reads what `encode_prediction` wrote: a JSON object, with the record's
`schema` header naming its type and version (`prediction/1`). These are the schemas of those values, made from
the same pydantic models that write and read them, so they cannot drift: `docs/schemas/` holds them as files
(written by `python -m pipeline_core.schemas docs/schemas`, which never overwrites a published file with
different content), and a test fails when a file differs from what the models say. Versioning: any change to a
model (a field added, removed or narrowed) is a new version, a new header value and a new file beside the old
ones, which stay as published; the readers here refuse versions they do not know (`SchemaVersionError`), and a
downstream consumer should do the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline_core.events import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, FeedbackEvent, PredictionEvent, _Event

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_PUBLISHED: dict[str, type[_Event]] = {PREDICTION_SCHEMA: PredictionEvent, FEEDBACK_SCHEMA: FeedbackEvent}


def file_name(schema: str) -> str:
    """`prediction/1` -> `prediction-1.schema.json`."""
    return schema.replace("/", "-") + ".schema.json"


def json_schema(schema: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a record value of this type and version, as it is written."""
    model = _PUBLISHED[schema]
    body = model.model_json_schema(mode="serialization")
    return {
        "$schema": DIALECT,
        "$id": f"urn:kafka-image-classifier:schema:{schema}",
        "title": schema,
        "x-kafka-header": {"schema": schema},
        **body,
    }


def published() -> dict[str, dict[str, Any]]:
    """Every published schema by file name."""
    return {file_name(schema): json_schema(schema) for schema in _PUBLISHED}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline_core.schemas <folder>", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, document in published().items():
        path = folder / name
        if path.exists() and path.read_text() != render(document):
            # A published version is frozen: a reader may hold it. A changed model is a new version.
            changed.append(name)
            continue
        path.write_text(render(document))
        print(path)
    for name in changed:
        print(f"{folder / name} is published and differs from its model: bump its version", file=sys.stderr)
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
