"""The OpenAPI documents say what the services do: schemathesis against both services, running for real.

A whole system (real broker, the sink, one inference consumer, the API) runs with an API key. Schemathesis
takes each service's OpenAPI document, generates requests for every operation (valid ones and ones the schema
forbids, unsupported methods, boundary values), sends them to the running service and runs all its default
checks on each answer: no 5xx, only documented status codes, content types and headers, bodies that match
their schemas, invalid data refused and valid data accepted.

The documents are built at collection time by the services' own code (schemathesis parametrizes tests before
any fixture runs), and a test checks that each is exactly what the running service serves at /openapi.json.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from launcher.system import System
from producer_api.app import create_app as create_api
from producer_api.settings import ApiSettings
from results_sink.app import create_app as create_sink
from results_sink.settings import SinkSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "tests-api-key-0123456789"  # API_KEY takes 16 characters or more
AUTH = {"X-API-Key": KEY}
MAX_EXAMPLES = 25
# Schemathesis's own expectations (4.32), each with one status more, said why below.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
ACCEPTANCES = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
CONFIG = schemathesis.Config.from_dict(
    {
        # Reproducible and bounded: the same requests on every run, at most this many per operation and phase.
        "seed": int(os.environ.get("CONTRACT_SEED", "15")),
        # The key, as the document's security scheme names it: schemathesis sends it, and leaves it out or
        # spoils it where it tests that a guarded operation refuses such a request.
        "auth": {"openapi": {"apiKeyHeader": {"api_key": KEY}}},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "checks": {
            # Too many files or too large a body is refused with 413, which schemathesis does not count as
            # a refusal by default.
            "negative_data_rejection": {"expected-statuses": REFUSALS}
        },
        "operations": [
            {
                "include-name": "POST /feedback",
                "checks": {
                    # A schema cannot say which job ids the API issued (they are signed): a well-formed one
                    # that it did not issue is refused with 400, as documented.
                    "positive_data_acceptance": {"expected-statuses": ACCEPTANCES},
                    # A form field is text on the wire: a `report` that schemathesis makes an object or a
                    # number arrives as its JSON text, which is a valid report.
                    "negative_data_rejection": {"enabled": False},
                },
            }
        ],
    }
)
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def _image(fmt: str, size: tuple[int, int], colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


# `format: binary` parts are images, in every format the API accepts: the document says so in words, which
# schemathesis cannot read. Without this, every schema-valid upload would be random bytes and a 400.
IMAGES = [
    _image(fmt, size, colour)
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    for size, colour in (((64, 48), "teal"), ((17, 33), "orange"))
]
schemathesis.openapi.format("binary", st.sampled_from(IMAGES))


def _document(kind: str) -> dict[str, Any]:
    common: dict[str, Any] = {"api_key": KEY, "_env_file": None}
    if kind == "api":
        return create_api(ApiSettings(**common)).openapi()
    return create_sink(SinkSettings(**common)).openapi()


DOCUMENTS = {kind: _document(kind) for kind in ("api", "sink")}
api = schemathesis.openapi.from_dict(DOCUMENTS["api"], config=CONFIG)
sink = schemathesis.openapi.from_dict(DOCUMENTS["sink"], config=CONFIG)


@pytest.fixture(scope="module")
def contract_system(system_factory: Callable[..., System]) -> System:
    """Its own system: the shared one runs without an API key, and this one checks the guarded answers too."""
    return system_factory(consumers=1, API_KEY=KEY)


@pytest.mark.parametrize("kind", ["api", "sink"])
def test_the_documents_checked_are_the_ones_served(contract_system: System, kind: str) -> None:
    base = contract_system.api_url if kind == "api" else contract_system.sink_url
    served = httpx.get(f"{base}/openapi.json", timeout=10).json()
    assert served == DOCUMENTS[kind]


@SETTINGS
@api.parametrize()
def test_upload_api_does_what_its_openapi_document_says(
    case: schemathesis.Case, contract_system: System
) -> None:
    case.call_and_validate(base_url=contract_system.api_url, timeout=30)


@SETTINGS
@sink.parametrize()
def test_results_sink_does_what_its_openapi_document_says(
    case: schemathesis.Case, contract_system: System
) -> None:
    case.call_and_validate(base_url=contract_system.sink_url, timeout=30)


def test_the_answers_about_real_jobs_match_the_documents(
    contract_system: System, photos: dict[str, bytes]
) -> None:
    """What generated requests rarely reach: results of jobs the API issued, pending, done and streamed."""
    upload = api["/v1/images"]["POST"].Case(
        body={"file": [photos["chelsea"], photos["coffee"]]}, media_type="multipart/form-data"
    )
    accepted = upload.call_and_validate(base_url=contract_system.api_url, headers=AUTH, timeout=30)
    assert accepted.status_code == 202, accepted.text
    ids = [job["id"] for job in accepted.json()["jobs"]]

    for job_id in ids:  # 202 while pending, then 200 with the result: each answer checked
        deadline = time.monotonic() + 60
        result = sink["/v1/results/{job_id}"]["GET"].Case(path_parameters={"job_id": job_id})
        while result.call_and_validate(base_url=contract_system.sink_url, headers=AUTH).status_code != 200:
            assert time.monotonic() < deadline, f"no result for {job_id}"
            time.sleep(0.1)

    stream = sink["/v1/events"]["GET"].Case(query={"ids": ",".join(ids)})
    streamed = stream.call_and_validate(base_url=contract_system.sink_url, headers=AUTH, timeout=30)
    assert streamed.status_code == 200 and streamed.text.count("event: result") == 2, streamed.text
    last = max(
        int(line.removeprefix("id: ")) for line in streamed.text.splitlines() if line.startswith("id: ")
    )
    resumed = sink["/v1/events"]["GET"].Case(
        query={"ids": ",".join(ids)}, headers={"Last-Event-ID": str(last)}
    )
    assert resumed.call_and_validate(base_url=contract_system.sink_url, headers=AUTH).status_code == 204
