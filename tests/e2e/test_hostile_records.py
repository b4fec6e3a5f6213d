"""No record stops a consumer: generated odd images through the API, and hostile records written straight to
Kafka, through a real running system. Every accepted image ends done or failed, the consumers and the sink stay
up, and photos uploaded afterwards are still classified."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import system_settings, upload, wait_by_polling, write_raw

from launcher.system import System
from pipeline_core.clients import create_consumer, create_producer
from pipeline_core.events import PredictionEvent
from pipeline_core.jobs import new_job_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Pillow modes with the formats that can store them, and the numpy type of their pixels.
MODES: dict[str, tuple[tuple[str, ...], object]] = {
    "1": (("PNG", "TIFF", "BMP", "GIF"), np.bool_),
    "L": (("PNG", "TIFF", "JPEG", "BMP", "GIF", "WEBP"), np.uint8),
    "LA": (("PNG", "TIFF"), np.uint8),
    "P": (("PNG", "GIF", "TIFF", "BMP"), np.uint8),
    "RGB": (("PNG", "TIFF", "JPEG", "BMP", "WEBP"), np.uint8),
    "RGBA": (("PNG", "TIFF", "WEBP"), np.uint8),
    "CMYK": (("JPEG", "TIFF"), np.uint8),  # made from RGBA pixels
    "I;16": (("PNG", "TIFF"), np.uint16),
    "I": (("TIFF",), np.int32),
    "F": (("TIFF",), np.float32),
}
CHANNELS = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}


@st.composite
def odd_images(draw: st.DrawFn) -> bytes:
    """A small image of any mode, size and pixel values (flat, extreme, random, NaN), in a format that holds it."""
    mode = draw(st.sampled_from(sorted(MODES)))
    formats, dtype = MODES[mode]
    fmt = draw(st.sampled_from(formats))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    shape = (height, width, CHANNELS[mode]) if mode in CHANNELS else (height, width)
    kind = draw(st.sampled_from(["flat", "random", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype is np.float32:
        choices = np.array([np.nan, np.inf, -np.inf, -1e30, 1e30, 0.0, 0.5, -3.0], dtype=np.float32)
    elif dtype is np.bool_:
        choices = np.array([False, True])
    else:
        info = np.iinfo(dtype)  # type: ignore[type-var]
        choices = np.array([info.min, info.max, 0, 1], dtype=dtype)  # type: ignore[arg-type]
    if kind == "flat":
        pixels = np.full(shape, rng.choice(choices), dtype=dtype)  # type: ignore[arg-type]
    elif kind == "extremes":
        pixels = rng.choice(choices, size=shape).astype(dtype)  # type: ignore[arg-type]
    else:
        pixels = (rng.random(shape) * 255).astype(dtype)  # type: ignore[arg-type]
    image = Image.fromarray(pixels)  # numpy's dtype and shape pick the mode: 1, L, LA, RGB, RGBA, I;16, I, F
    if mode in ("P", "CMYK"):
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


class Photo(bytes):
    """A photo's bytes with a short repr: hypothesis prints every argument of a test it runs."""

    def __repr__(self) -> str:
        return f"<photo of {len(self)} bytes>"


@pytest.fixture(scope="module")
def coffee(photos: dict[str, bytes]) -> Photo:
    return Photo(photos["coffee"])


def classified_after(system: System, photo: bytes) -> None:
    """The system still serves: every service is up and a photo uploaded now is classified."""
    system.check_alive()
    with httpx.Client(base_url=system.api_url, timeout=30) as client:
        jobs = upload(client, {f"after-{n}.jpg": photo for n in range(6)})  # reaches every partition
        for job in jobs:
            assert wait_by_polling(client, job["result_url"])["label"] == "espresso"
    system.check_alive()


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(images=st.lists(odd_images(), min_size=16, max_size=16))
def test_generated_odd_images_each_end_done_or_failed_and_no_consumer_dies(
    running_system: System, coffee: Photo, images: list[bytes]
) -> None:
    with httpx.Client(base_url=running_system.api_url, timeout=60) as client:
        outcomes = []
        for n in range(0, len(images), 4):
            files = [("file", (f"odd-{n + k}.img", data)) for k, data in enumerate(images[n : n + 4])]
            response = client.post("/v1/images", files=files)
            assert response.status_code in (202, 400, 413, 415, 422), response.text
            outcomes.append(response)
        jobs = [job for r in outcomes if r.status_code == 202 for job in r.json()["jobs"]]
        for job in jobs:
            result = wait_by_polling(client, job["result_url"])
            assert result["status"] in ("done", "failed"), result
            assert len(json.dumps(result)) < 20_000, "a failed result says why in a bounded message"
    classified_after(running_system, coffee)


def hostile_records(
    job_ids: list[str],
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    """Records no producer of ours writes: null and huge headers, null key and value, wrong schemas."""
    meta = json.dumps(
        {"job_id": job_ids[0], "filename": "x.jpg", "content_type": "image/jpeg", "received_at": 1.0}
    )
    huge = b"h" * 2_000_000
    return [
        (
            b"",
            None,
            [],
        ),  # kafka-python refuses to write a record with neither key nor value; these are nearest
        (None, b"", [("schema", b"image/1")]),
        (b"k", None, [("schema", None)]),
        (b"k", b"v", [("schema", b"image/1"), ("meta", None)]),
        (None, b"\x00" * 100, [("schema", huge)]),  # an error message that echoes this must stay bounded
        (job_ids[1].encode(), b"garbage", [("schema", b"image/1"), ("meta", huge)]),
        (job_ids[0].encode(), b"not an image", [("schema", b"image/1"), ("meta", meta.encode())]),
        (b"k", b"x", [("schema", b"image/999"), ("meta", meta.encode())]),
        (b"k", b"x", [("schema", b"prediction/1")]),
        (b"\xff" * 300, b"x", [(chr(0x1F600) * 50, b"\xff"), ("", b"")]),
        (None, b"x", [("schema", b"image/1"), ("meta", json.dumps({"job_id": "a" * 100_000}).encode())]),
    ]


def dead_letters(system: System, minimum: int, timeout_s: float = 60, settle_s: float = 2.0) -> list[object]:
    """The dead-letter topic's records: read until at least `minimum` came and nothing more for `settle_s`."""
    settings_ = system_settings(system)
    consumer = create_consumer(settings_, "tests", group_id=None, isolation_level="read_committed")
    consumer.subscribe([settings_.topic_dead_letter])
    found: list[object] = []
    deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [r for records in consumer.poll(timeout_ms=300).values() for r in records]
            found += batch
            if batch:
                quiet_since = time.monotonic()
            elif len(found) >= minimum and time.monotonic() - quiet_since >= settle_s:
                break
    finally:
        consumer.close()
    return found


class NotUtf8(str):
    """A header key that kafka-python writes as bytes that are not UTF-8 (as Go and C clients can): its own
    consumer then cannot parse the record."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-not-utf-8"


def test_hostile_records_on_the_images_topic_are_dead_lettered_and_the_group_keeps_classifying(
    system_factory,
    photos: dict[str, bytes],  # type: ignore[no-untyped-def]
) -> None:
    system = system_factory(consumers=2)
    s = system_settings(system)
    secret = system.service_env()["JOB_ID_SECRET"].encode()
    jobs = [new_job_id(secret) for _ in range(2)]
    records = hostile_records(jobs)
    write_raw(s, s.topic_images, records, partitions=s.topic_partitions)
    dead = dead_letters(system, len(records))
    assert len(dead) == len(records), "every hostile record is copied to the dead-letter topic, once"
    for record in dead:
        reason = dict(record.headers)["dead-letter-reason"]  # type: ignore[attr-defined]
        assert len(reason) <= 300
    with httpx.Client(base_url=system.api_url, timeout=30) as client:
        for job in jobs:  # the records that named a job this API issued end that job with a failed result
            result = wait_by_polling(client, f"{system.sink_url}/v1/results/{job}")
            assert result["status"] == "failed" and len(str(result["error"])) <= 400, result
    classified_after(system, photos["coffee"])


@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    extra=st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=70)),
            st.one_of(st.none(), st.binary(max_size=2_000), st.just(b'{"job_id": "x", "status": "done"}')),
            st.lists(
                st.tuples(
                    st.sampled_from(["schema", "meta", "x", ""]),
                    st.one_of(
                        st.none(), st.binary(max_size=300), st.sampled_from([b"prediction/1", b"feedback/1"])
                    ),
                ),
                max_size=3,
            ),
        ),
        min_size=10,
        max_size=10,
    )
)
def test_hostile_records_on_the_predictions_and_feedback_topics_never_stop_the_sink(
    running_system: System,
    coffee: Photo,
    extra: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
) -> None:
    s = system_settings(running_system)
    secret = running_system.service_env()["JOB_ID_SECRET"].encode()
    job = new_job_id(secret)
    good = PredictionEvent(job_id=job, status="done", label="espresso", score=0.9).model_dump_json()
    nul = PredictionEvent(
        job_id=new_job_id(secret), status="done", label="a\x00b", score=0.5
    ).model_dump_json()
    fixed = [
        (None, None, [("schema", None)]),
        (
            job.encode(),
            b"{not json",
            [("schema", b"prediction/1")],
        ),  # dead-lettered; the job's real result follows
        (b"k", b"x" * 900_000, [("schema", b"prediction/1"), ("x", None)]),
        (b"k", nul.encode(), [("schema", b"prediction/1")]),
    ]
    shadow = PredictionEvent(
        job_id=job, status="done", label="cup", score=0.4, model_name="m" * 100_000
    ).model_dump_json()
    for topic in (s.topic_predictions, s.topic_feedback, s.topic_predictions_shadow):
        write_raw(s, topic, fixed + extra)
    write_raw(s, s.topic_predictions, [(job.encode(), good.encode(), [("schema", b"prediction/1")])])
    write_raw(s, s.topic_predictions_shadow, [(job.encode(), shadow.encode(), [("schema", b"prediction/1")])])
    with httpx.Client(timeout=30) as client:
        result = wait_by_polling(client, f"{running_system.sink_url}/v1/results/{job}")
        assert result["status"] == "done", "the readable result after the hostile records is stored"
        deadline = time.monotonic() + 60
        while result["shadow"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
            result = client.get(f"{running_system.sink_url}/v1/results/{job}").json()
        assert result["label"] == "espresso", "a shadow's answer never replaces the primary's"
        assert result["shadow"] is not None and result["shadow"]["label"] == "cup"  # type: ignore[index]
        assert client.get(f"{running_system.sink_url}/v1/models").status_code == 200
        assert client.get(f"{running_system.sink_url}/healthz").status_code == 200
    classified_after(running_system, coffee)


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_a_record_with_a_header_key_that_is_not_utf8_stops_no_other_partition(
    system_factory,
    photos: dict[str, bytes],
    client: str,  # type: ignore[no-untyped-def]
) -> None:
    """A header key that is not UTF-8 (the broker takes one; Go or C clients can write it). kafka-python 3.0.12
    cannot read past it (docs/reliability.md, known limits): that partition stalls, the others of the consumer
    that holds it, and of the group, keep flowing. confluent-kafka reads it: the record is dead-lettered and
    its own partition flows on too."""
    from support import predictions_on_topic

    from pipeline_core.events import ImageEvent, ImageMeta, encode_image

    system = system_factory(consumers=1, KAFKA_CLIENT=client)
    s = system_settings(system)
    producer = create_producer(s, "tests")
    producer.send(s.topic_images, partition=0, key=b"k", value=b"x", headers=[(NotUtf8("h"), b"v")]).get(10)
    jobs = {}
    for partition in range(s.topic_partitions):
        meta = ImageMeta(
            job_id=f"p{partition}", filename="c.jpg", content_type="image/jpeg", received_at=time.time()
        )
        key, value, headers = encode_image(ImageEvent(meta, photos["coffee"]))
        producer.send(s.topic_images, partition=partition, key=key, value=value, headers=headers)
        jobs[meta.job_id] = partition
    producer.flush(30)
    producer.close()
    flowing = set(jobs) - ({"p0"} if client == "kafka-python" else set())
    seen = predictions_on_topic(s, flowing, timeout_s=60)
    assert flowing <= set(seen), f"partitions kept flowing: missing {sorted(flowing - set(seen))}"
    if client == "confluent-kafka":
        dead = dead_letters(system, 1)
        assert len(dead) == 1 and dict(dead[0].headers)["dead-letter-reason"]  # type: ignore[attr-defined]
    system.check_alive()
