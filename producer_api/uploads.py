"""From a multipart request to published image events: read, validate all, then build events and job links."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import Message

from pipeline_core.events import ImageEvent, ImageMeta
from pipeline_core.jobs import new_job_id
from producer_api.deps import Services
from producer_api.forms import FormLimits, read_form
from producer_api.models import Job
from producer_api.settings import ApiSettings
from producer_api.validation import ImageLimits, UploadRejected, ValidatedUpload


def body_limit(settings: ApiSettings, max_files: int) -> int:
    """Largest request body accepted for `max_files` images (the record overhead covers multipart framing)."""
    return max_files * settings.max_record_bytes


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse a declared body that is too large before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise UploadRejected(413, "body_too_large", f"the request body is over {max_bytes} bytes")


def limit_body(request: Request, max_bytes: int) -> Request:
    """The same request, refused with 413 as soon as more than `max_bytes` of its body arrive.

    For parsers that read the whole body (Starlette's forms): a body sent without Content-Length passes
    `check_content_length`, and would otherwise be read to its end whatever its size.
    """
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise UploadRejected(413, "body_too_large", f"the request body is over {max_bytes} bytes")
        return message

    return Request(request.scope, receive)


async def receive_images(request: Request, services: Services, max_files: int) -> list[ValidatedUpload]:
    """Every `file` part of the request, validated (on the validation threads, off the event loop);
    `UploadRejected` naming the first bad one."""
    settings = services.settings
    max_body = body_limit(settings, max_files)
    check_content_length(request, max_body)
    form = await read_form(request, FormLimits(max_files, settings.max_image_bytes, max_body))
    # A browser form submitted with no file chosen sends one empty part with an empty file name.
    parts = [part for part in form.files if part.filename or part.size]
    if not parts:
        raise UploadRejected(400, "no_file", "send the image(s) as multipart/form-data parts named 'file'")
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.accepted_formats)
    return await services.validator.validate_all([(part.filename, part.data) for part in parts], limits)


def to_events(uploads: list[ValidatedUpload], settings: ApiSettings) -> list[ImageEvent]:
    """One event per upload, each with a fresh signed job id."""
    received_at = time.time()
    return [
        ImageEvent(
            meta=ImageMeta(
                job_id=new_job_id(settings.job_id_key),
                filename=upload.filename,
                content_type=upload.content_type,
                received_at=received_at,
            ),
            image=upload.data,
        )
        for upload in uploads
    ]


def to_job(event: ImageEvent, settings: ApiSettings) -> Job:
    """The job's absolute result and events URLs, as clients reach the sink."""
    result_url = f"{settings.results_public_url}/v1/results/{event.meta.job_id}"
    return Job(
        id=event.meta.job_id,
        filename=event.meta.filename,
        result_url=result_url,
        events_url=f"{result_url}/events",
    )
