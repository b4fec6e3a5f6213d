"""POST /v1/images on the real broker: events really on the topic, bad uploads refused before publishing."""

from __future__ import annotations

import pytest
from api_helpers import AppClient, TopicReader, make_image, raw_multipart
from support import png_header_claiming

from pipeline_core.events import decode_image
from pipeline_core.jobs import is_issued_job_id
from producer_api.app import create_app
from producer_api.settings import ApiSettings

pytestmark = pytest.mark.timeout(60)
KEY = "tests-api-key-0123456789"  # API_KEY takes 16 characters or more


def test_n_files_give_n_jobs_and_n_events_spread_over_partitions(
    client: AppClient, api_settings: ApiSettings, reader: TopicReader, photos: dict[str, bytes]
) -> None:
    files = [("file", ("chelsea.jpg", photos["chelsea"], "image/jpeg"))]
    files += [
        ("file", (f"img-{n}.png", make_image("PNG", (20 + n, 10)), "application/octet-stream"))
        for n in range(11)
    ]

    response = client.post("/v1/images", files=files)

    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [job["filename"] for job in jobs] == [f[1][0] for f in files]
    for job in jobs:
        assert set(job) == {"id", "filename", "result_url", "events_url"}
        assert is_issued_job_id(job["id"], api_settings.job_id_key)
        assert job["result_url"] == f"http://localhost:8001/v1/results/{job['id']}"
        assert job["events_url"] == f"http://localhost:8001/v1/results/{job['id']}/events"
    records = reader.read(api_settings.topic_images, len(files))
    events = {e.meta.job_id: e for e in (decode_image(r.value, r.headers) for r in records)}
    assert set(events) == {job["id"] for job in jobs}
    by_name = {f[1][0]: f[1][1] for f in files}
    for job in jobs:
        event = events[job["id"]]
        assert event.image == by_name[job["filename"]]
        assert event.meta.filename == job["filename"]
        assert event.meta.content_type == ("image/jpeg" if job["filename"].endswith(".jpg") else "image/png")
    assert len({r.partition for r in records}) >= 3, "job-id keys spread the events over the partitions"


def test_content_type_comes_from_the_bytes_not_the_client(
    client: AppClient, api_settings: ApiSettings, reader: TopicReader
) -> None:
    response = client.post(
        "/v1/images", files={"file": ("really-a-gif.jpg", make_image("GIF"), "image/jpeg")}
    )
    assert response.status_code == 202
    (record,) = reader.read(api_settings.topic_images, 1)
    assert decode_image(record.value, record.headers).meta.content_type == "image/gif"


@pytest.mark.parametrize(
    ("name", "data", "status", "error"),
    [
        ("empty.jpg", b"", 400, "empty_file"),
        ("text.jpg", b"this is not a jpeg at all", 400, "not_an_image"),
        ("truncated.png", make_image("PNG")[:30], 400, "invalid_image"),
        ("icon.ico", make_image("ICO", (32, 32)), 400, "unsupported_format"),
        ("paper.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", 400, "not_an_image"),
        ("bomb.png", png_header_claiming(100_000, 100_000), 400, "too_many_pixels"),
    ],
)
def test_a_bad_file_among_good_ones_is_named_and_nothing_is_published(
    client: AppClient,
    api_settings: ApiSettings,
    reader: TopicReader,
    name: str,
    data: bytes,
    status: int,
    error: str,
) -> None:
    files = [
        ("file", ("good-1.png", make_image())),
        ("file", (name, data)),
        ("file", ("good-2.png", make_image())),
    ]

    response = client.post("/v1/images", files=files)

    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "filename", "reason"}
    assert body["error"] == error
    assert body["filename"] == name
    assert body["reason"]
    assert reader.count(api_settings.topic_images) == 0


def test_a_file_over_the_size_limit_is_413(api_settings_factory, reader: TopicReader) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings_factory(max_image_bytes=64 * 1024)
    big = make_image("BMP", (200, 200))  # ~120 KB
    with AppClient(create_app(settings)) as client:
        response = client.post(
            "/v1/images", files=[("file", ("ok.png", make_image())), ("file", ("big.bmp", big))]
        )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert response.json()["filename"] == "big.bmp"
    assert reader.count(settings.topic_images) == 0


def test_a_declared_body_over_the_limit_is_413_before_reading_it(
    client: AppClient, api_settings: ApiSettings
) -> None:
    limit = api_settings.max_files_per_request * api_settings.max_record_bytes
    response = client.post(
        "/v1/images",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=abc", "content-length": str(limit + 1)},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_too_many_files_is_413(api_settings_factory, reader: TopicReader) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings_factory(max_files_per_request=3)
    with AppClient(create_app(settings)) as client:
        response = client.post("/v1/images", files=[("file", (f"{n}.png", make_image())) for n in range(4)])
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_files"
    assert response.json()["filename"] == "3.png"
    assert reader.count(settings.topic_images) == 0


@pytest.mark.parametrize(
    "body", [{}, {"files": {"other": ("a.png", make_image())}}, {"json": {"file": "nope"}}]
)
def test_no_file_is_400(client: AppClient, body: dict[str, object]) -> None:
    response = client.post("/v1/images", **body)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert response.json()["error"] == "no_file"


def test_hostile_filenames_are_sanitised_in_the_answer_and_the_event(
    client: AppClient, api_settings: ApiSettings, reader: TopicReader
) -> None:
    names = [
        b"../../etc/passwd.png",
        b"bad\x00name\x1b[31m\x07.png",
        b"x" * 1000 + b".png",
        b"..\\..\\win.png",
        b"....",
    ]
    body, headers = raw_multipart([("file", name, make_image()) for name in names])
    response = client.post("/v1/images", content=body, headers=headers)

    assert response.status_code == 202, response.text
    got = [job["filename"] for job in response.json()["jobs"]]
    assert got[0] == "passwd.png"
    assert got[1] == "badname[31m.png"
    assert len(got[2]) == 120
    assert got[2].endswith(".png")
    assert got[3] == "win.png"
    assert got[4] == "upload"
    stored = {
        decode_image(r.value, r.headers).meta.filename for r in reader.read(api_settings.topic_images, 5)
    }
    assert stored == set(got)


def test_the_api_key_is_required_when_set_and_health_stays_open(api_settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings_factory(api_key=KEY)
    with AppClient(create_app(settings)) as client:
        files = {"file": ("a.png", make_image())}
        assert client.post("/v1/images", files=files).status_code == 401
        assert client.post("/v1/images", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/images", files=files, headers={"X-API-Key": KEY}).status_code == 202
        assert client.post("/predict", files=files).status_code == 401
        assert client.post("/feedback", data={"report": "x"}).status_code == 401
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/").status_code == 200
