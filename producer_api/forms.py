"""A streaming multipart/form-data reader that keeps files in memory and stops as soon as a limit is crossed.

Starlette's `Request.form()` limits the number of files (`max_files`) but its `max_part_size` covers only
non-file fields: a file part is read to its end whatever its size, and spooled to a temporary file on disk
past 1 MiB. Uploads here are at most a few MiB and go straight to Kafka, so this reader keeps them in memory
and refuses a part the moment it is over the limit, without reading the rest of the body.
"""

from __future__ import annotations

import codecs
import functools
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from producer_api.validation import UploadRejected, safe_filename

MAX_FIELDS = 32  # parts other than files: plain fields, and files under another name (read, not kept)
MAX_FIELD_BYTES = 64 * 1024  # the bytes of all those parts together
MAX_PART_HEADER_BYTES = 8 * 1024  # one part's headers
MAX_CHARSET_NAME = 40
# What a usable charset must decode unchanged: multipart's own syntax is ASCII. Escapes first, so that the
# escape codecs show themselves by decoding them instead of warning about the ones they do not know.
_ASCII_PROBE = b"\\n\\u0041" + bytes(c for c in range(0x20, 0x7F) if c != ord("\\"))
_HIGH_PROBE = bytes(range(0x80, 0x100))


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
    chunks: list[bytes] = field(default_factory=list)  # while the part arrives
    size: int = 0
    data: bytes = b""  # once it has: one buffer, the chunks dropped

    def finish(self) -> None:
        """Join the chunks into `data` and let them go, so a part is held once, not twice."""
        self.data, self.chunks = b"".join(self.chunks), []


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
        self._name = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._file: FilePart | None = None
        self._field: tuple[str, bytearray] | None = None
        self._other_parts = 0  # every part that is not a file counts, whatever its name (repeated or not)
        self._other_bytes = 0

    def on_part_begin(self) -> None:
        self._headers, self._file, self._field, self._header_bytes = [], None, None, 0

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise UploadRejected(
                400, "invalid_form", f"a part's headers are over {MAX_PART_HEADER_BYTES} bytes"
            )

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((bytes(self._name).lower(), bytes(self._value)))
        self._name, self._value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = self._text(options.get(b"name", b""))
        if name == self.limits.file_field:
            # A `file` part sent without a filename (some clients omit an empty one) is still an upload: read
            # as a plain field it would be dropped silently while the rest of the request is accepted.
            self._start_file(self._text(options.get(b"filename", b"")))
        else:
            # A file under another name is not ours to keep, but it is read, so it counts like a field.
            self._start_other(name, keep=b"filename" not in options)

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset, "replace")
        except (UnicodeError, LookupError) as e:  # charsets are checked up front; this is the last guard
            raise UploadRejected(400, "invalid_charset", f"the form cannot be read as {self.charset}") from e

    def _start_other(self, name: str, *, keep: bool) -> None:
        self._other_parts += 1
        if self._other_parts > MAX_FIELDS:
            raise UploadRejected(400, "invalid_form", f"more than {MAX_FIELDS} form parts besides files")
        self._field = (name, bytearray()) if keep else None

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
        else:
            self._other_bytes += end - start
            if self._other_bytes > MAX_FIELD_BYTES:
                raise UploadRejected(
                    413, "field_too_large", f"the form's parts besides files are over {MAX_FIELD_BYTES} bytes"
                )
            if self._field is not None:
                self._field[1].extend(data[start:end])

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.finish()
        if self._field is not None:
            name, value = self._field
            self.form.fields[name] = self._text(bytes(value))

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


@functools.lru_cache(maxsize=64)
def _text_codec(name: str) -> str | None:
    """The codec's own name if `name` is a text encoding that reads ASCII as ASCII, else None."""
    if len(name) > MAX_CHARSET_NAME:
        return None
    try:
        # Bytes-to-bytes and text-to-text codecs (zlib, base64, rot13) raise LookupError on bytes.decode.
        if _ASCII_PROBE.decode(name, "replace") != _ASCII_PROBE.decode("ascii"):
            return None  # UTF-16, UTF-7, EBCDIC, escape codecs: the form's names and syntax would be garbled
        # Codecs that refuse the "replace" error handler (idna, undefined) raise here.
        _HIGH_PROBE.decode(name, "replace")
        return codecs.lookup(name).name
    except (LookupError, UnicodeError, ValueError):
        return None


def form_charset(content_type: str | None) -> str:
    """The charset a form's text is read with (utf-8 when none is given); `UploadRejected` for one that is not a
    text encoding, or not an ASCII-compatible one, or unknown."""
    _, params = parse_options_header(content_type)
    name = params.get(b"charset", b"utf-8").decode("latin-1")
    codec = _text_codec(name)
    if codec is None:
        shown = name if len(name) <= MAX_CHARSET_NAME else name[:MAX_CHARSET_NAME] + "..."
        raise UploadRejected(
            400, "invalid_charset", f"charset {shown!r} is not a text encoding this service reads; use utf-8"
        )
    return codec


async def read_form(request: Request, limits: FormLimits) -> ParsedForm:
    """The request's multipart form; an empty form for any other content type (no files, no fields)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        return ParsedForm()
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRejected(400, "invalid_form", "multipart/form-data without a boundary")
    collector = _Collector(limits, form_charset(request.headers.get("content-type")))
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
