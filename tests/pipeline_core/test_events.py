"""Event (de)serialisation: round trips, and loud failures for foreign or other-version records."""

from __future__ import annotations

import pytest

from pipeline_core.errors import DecodeError, SchemaVersionError
from pipeline_core.events import (
    FeedbackEvent,
    ImageEvent,
    ImageMeta,
    PredictionEvent,
    ScoredLabelModel,
    decode_feedback,
    decode_image,
    decode_prediction,
    encode_feedback,
    encode_image,
    encode_prediction,
)

META = ImageMeta(job_id="job-1", filename="cat.jpg", content_type="image/jpeg", received_at=1.5)


def test_image_event_round_trip_keeps_bytes_and_metadata() -> None:
    event = ImageEvent(meta=META, image=b"\xff\xd8jpeg bytes")
    key, value, headers = encode_image(event)
    assert key == b"job-1"
    assert value == b"\xff\xd8jpeg bytes"
    assert decode_image(value, headers) == event


def test_prediction_round_trip() -> None:
    event = PredictionEvent(
        job_id="job-1",
        status="done",
        label="tabby",
        score=0.5,
        top=(ScoredLabelModel(label="tabby", wnid="n02123045", index=281, score=0.5),),
    )
    key, value, headers = encode_prediction(event)
    assert key == b"job-1"
    assert decode_prediction(value, headers) == event


def test_feedback_round_trip_without_job_has_no_key() -> None:
    event = FeedbackEvent(report="wrong label", received_at=2.0)
    key, value, headers = encode_feedback(event)
    assert key is None
    assert decode_feedback(value, headers) == event


def test_record_without_schema_header_is_refused() -> None:
    with pytest.raises(DecodeError, match="no 'schema' header"):
        decode_image(b"bytes", [])


def test_newer_version_of_the_same_event_is_a_version_error() -> None:
    _key, value, _headers = encode_prediction(PredictionEvent(job_id="j", status="failed", error="x"))
    with pytest.raises(SchemaVersionError, match="prediction/3"):
        decode_prediction(value, [("schema", b"prediction/3")])


def test_an_event_of_another_type_is_refused() -> None:
    _key, value, headers = encode_feedback(FeedbackEvent(report="r", received_at=1.0))
    with pytest.raises(DecodeError, match="feedback/1") as info:
        decode_prediction(value, headers)
    assert not isinstance(info.value, SchemaVersionError)


def test_invalid_json_is_a_decode_error_with_cause() -> None:
    with pytest.raises(DecodeError) as info:
        decode_prediction(b"{not json", [("schema", b"prediction/1")])
    assert info.value.__cause__ is not None


def test_image_record_with_bad_metadata_or_no_bytes() -> None:
    _key, value, headers = encode_image(ImageEvent(meta=META, image=b"x"))
    with pytest.raises(DecodeError, match="invalid metadata"):
        decode_image(value, [("schema", b"image/1"), ("meta", b'{"job_id": ""}')])
    with pytest.raises(DecodeError, match="no image bytes"):
        decode_image(b"", headers)
    with pytest.raises(DecodeError, match="no 'meta' header"):
        decode_image(value, [("schema", b"image/1")])


def test_unknown_fields_are_refused_not_ignored() -> None:
    with pytest.raises(DecodeError):
        decode_prediction(b'{"job_id": "j", "status": "done", "surprise": 1}', [("schema", b"prediction/1")])
