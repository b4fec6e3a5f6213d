"""A streaming multipart/form-data reader that keeps files in memory and stops as soon as a limit is crossed.

Starlette's `Request.form()` limits the number of files (`max_files`) but its `max_part_size` covers only
non-file fields: a file part is read to its end whatever its size, and spooled to a temporary file on disk
past 1 MiB. Uploads here are at most a few MiB and go straight to Kafka, so this reader keeps them in memory
and refuses a part the moment it is over the limit, without reading the rest of the body.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from producer_api.validation import UploadRejected, safe_filename

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class FormLimits:
    """What one request may carry."""

    max_files: int
    max_file_bytes: int
    max_body_bytes: int
    file_field: str = "file"


@dataclass(slots=True)
class FilePart:
    """One uploaded file as the client sent it (name untrusted, bytes unchecked)."""

    filename: str
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def data(self) -> bytes:
        """The file's bytes."""
        return b"".join(self.chunks)


@dataclass(slots=True)
class ParsedForm:
    """The file parts named like `FormLimits.file_field`, and the plain text fields."""

    files: list[FilePart] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


class _Collector:
    """python-multipart callbacks that build a `ParsedForm` and enforce the limits while data arrives."""

    def __init__(self, limits: FormLimits, charset: str) -> None:
        self.limits = limits
        self.charset = charset
        self.form = ParsedForm()
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = b""
        self._value = b""
        self._file: FilePart | None = None
        self._field: tuple[str, bytearray] | None = None
        self._skip = False

    def on_part_begin(self) -> None:
        self._headers, self._file, self._field, self._skip = [], None, None, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode(self.charset, "replace")
        if name == self.limits.file_field:
            # A `file` part sent without a filename (some clients omit an empty one) is still an upload: read
            # as a plain field it would be dropped silently while the rest of the request is accepted.
            self._start_file(options.get(b"filename", b"").decode(self.charset, "replace"))
        elif b"filename" not in options:
            self._start_field(name)
        else:
            self._skip = True  # a file under another name: not ours to read

    def _start_field(self, name: str) -> None:
        if len(self.form.fields) >= MAX_FIELDS:
            raise UploadRejected(400, "invalid_form", f"more than {MAX_FIELDS} form fields")
        self._field = (name, bytearray())

    def _start_file(self, filename: str) -> None:
        if len(self.form.files) >= self.limits.max_files:
            raise UploadRejected(
                413,
                "too_many_files",
                f"at most {self.limits.max_files} file(s) per request",
                safe_filename(filename),
            )
        self._file = FilePart(filename)
        self.form.files.append(self._file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.size += end - start
            if self._file.size > self.limits.max_file_bytes:
                raise UploadRejected(
                    413,
                    "too_large",
                    f"over the limit of {self.limits.max_file_bytes} bytes",
                    safe_filename(self._file.filename),
                )
            self._file.chunks.append(data[start:end])
        elif self._field is not None:
            self._field[1].extend(data[start:end])
            if len(self._field[1]) > MAX_FIELD_BYTES:
                raise UploadRejected(
                    413, "field_too_large", f"form field {self._field[0]!r} is over {MAX_FIELD_BYTES} bytes"
                )

    def on_part_end(self) -> None:
        if self._field is not None:
            name, value = self._field
            self.form.fields[name] = value.decode(self.charset, "replace")

    def callbacks(self) -> dict[str, object]:
        """The callback table python-multipart expects."""
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }


def _charset(params: dict[bytes, bytes]) -> str:
    name = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


async def read_form(request: Request, limits: FormLimits) -> ParsedForm:
    """The request's multipart form; an empty form for any other content type (no files, no fields)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        return ParsedForm()
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRejected(400, "invalid_form", "multipart/form-data without a boundary")
    collector = _Collector(limits, _charset(params))
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise UploadRejected(
                    413, "body_too_large", f"the request body is over {limits.max_body_bytes} bytes"
                )
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise UploadRejected(400, "invalid_form", "the multipart body is malformed") from e
    return collector.form
