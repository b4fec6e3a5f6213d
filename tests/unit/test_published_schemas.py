"""The JSON Schemas published in docs/schemas/ for downstream consumers of the predictions topic: the files say
what the models write, every record the encoder can write validates, and what it cannot write does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from support import published_schema

from pipeline_core.events import (
    FEEDBACK_SCHEMA,
    PREDICTION_SCHEMA,
    FeedbackEvent,
    PredictionEvent,
    ScoredLabelModel,
    Timings,
    encode_feedback,
    encode_prediction,
    schema_of,
)
from pipeline_core.schemas import file_name, published, render

FOLDER = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def validator(schema: str) -> Draft202012Validator:
    return published_schema(schema)  # the one the end-to-end tests check records with


def test_the_files_are_what_the_models_say() -> None:
    """Regenerate with `python -m pipeline_core.schemas docs/schemas` after changing a model (and bump its
    version: see pipeline_core/schemas.py)."""
    expected = published()
    for name, document in expected.items():
        assert (FOLDER / name).read_text() == render(document), f"docs/schemas/{name} differs from its model"
    # Beside the current versions, only earlier versions of the same types (kept as published).
    current = {name.rsplit("-", 1)[0]: int(name.rsplit("-", 1)[1].split(".")[0]) for name in expected}
    for path in FOLDER.glob("*.schema.json"):
        kind, version = path.name.rsplit("-", 1)
        assert kind in current and int(version.split(".")[0]) <= current[kind], (
            f"{path.name} is not published"
        )


def test_a_published_file_is_never_overwritten(tmp_path: Path) -> None:
    from pipeline_core.schemas import main

    assert main([str(tmp_path)]) == 0
    name = file_name(PREDICTION_SCHEMA)
    (tmp_path / name).write_text((tmp_path / name).read_text().replace('"done"', '"finished"'))
    edited = (tmp_path / name).read_text()
    assert main([str(tmp_path)]) == 1, "a model that differs from its published file needs a new version"
    assert (tmp_path / name).read_text() == edited


text = st.text(max_size=40)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
labels = st.builds(
    ScoredLabelModel, label=text, wnid=st.none() | text, index=st.integers(0, 999), score=floats
)
timings = st.builds(
    Timings,
    received_at=floats,
    dequeued_at=floats,
    predicted_at=floats,
    preprocess_ms=floats,
    inference_ms=floats,
    batch_size=st.integers(1, 64),
)
predictions = st.builds(
    PredictionEvent,
    job_id=st.text(min_size=1, max_size=64),
    status=st.sampled_from(["done", "failed"]),
    filename=text,
    label=st.none() | text,
    score=st.none() | floats,
    top=st.lists(labels, max_size=5).map(tuple),
    error=st.none() | text,
    model_name=st.none() | text,
    model_version=st.none() | text,
    runtime=st.none() | text,
    timings=st.none() | timings,
)


@settings(max_examples=200, deadline=None)
@given(predictions)
def test_every_prediction_the_encoder_writes_validates(event: PredictionEvent) -> None:
    _key, value, headers = encode_prediction(event)
    assert schema_of(headers) == PREDICTION_SCHEMA
    errors = list(validator(PREDICTION_SCHEMA).iter_errors(json.loads(value)))
    assert not errors, errors[0].message


@settings(max_examples=50, deadline=None)
@given(
    st.builds(
        FeedbackEvent,
        report=st.text(max_size=200),
        job_id=st.none() | st.text(max_size=64),
        received_at=floats,
    )
)
def test_every_feedback_the_encoder_writes_validates(event: FeedbackEvent) -> None:
    _key, value, _headers = encode_feedback(event)
    assert validator(FEEDBACK_SCHEMA).is_valid(json.loads(value))


def written() -> dict[str, Any]:
    event = PredictionEvent(job_id="j", status="done", label="tabby", score=0.9)
    return dict(json.loads(encode_prediction(event)[1]))


@pytest.mark.parametrize(
    "change",
    [
        {"status": "maybe"},
        {"job_id": ""},
        {"job_id": "x" * 65},
        {"score": "high"},
        {"top": [{"label": "tabby", "index": "one", "score": 0.9, "wnid": None}]},
        {"unknown_field": 1},
    ],
    ids=["status", "empty-id", "long-id", "score-type", "top-type", "extra-field"],
)
def test_what_the_encoder_cannot_write_does_not_validate(change: dict[str, Any]) -> None:
    assert validator(PREDICTION_SCHEMA).is_valid(written())
    assert not validator(PREDICTION_SCHEMA).is_valid(written() | change)


def test_every_field_is_required_because_every_field_is_written() -> None:
    value = written()
    for field in value:
        assert not validator(PREDICTION_SCHEMA).is_valid({k: v for k, v in value.items() if k != field}), (
            field
        )
