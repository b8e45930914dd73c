"""Reading an upload: a body bounded in size, and one field out of a multipart form.

Starlette's `request.form()` spools every file part through a temporary file and builds a form
object; for a 28×28 PNG, parsing the bounded body with python-multipart's own parser takes a
fifth of its time on the event loop (bench/upload_parsing.py).
"""

from fastapi import HTTPException, Request, status
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

# An upload form has an image and maybe a field or two.
MAX_PARTS = 16


def payload_too_large(message: str) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, message)


class MalformedMultipartError(ValueError):
    """The body does not follow the multipart/form-data format its content type announces."""


async def read_body(request: Request) -> bytes:
    """The whole body (BodyLimit has bounded it); a client that leaves midway ends the request."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "the client left before sending the whole body"
        ) from None


def refuse_encoding(request: Request) -> None:
    """A 415 for a compressed body: inflating one would need a bound of its own (a few kB of
    gzip can inflate to gigabytes), and no client here needs it."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding[:20]!r} is not read: send the body uncompressed",
        )


def multipart_field(body: bytes, content_type: str, name: str) -> bytes | None:
    """The content of the form field called `name`, or None when the form has no such field."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedMultipartError("the content type names no boundary")
    form = _Form()
    try:
        MultipartParser(boundary, form.callbacks()).write(body)
    except MultipartParseError as error:
        raise MalformedMultipartError(str(error)) from None
    if not form.ended:
        raise MalformedMultipartError("the body ends before its closing boundary")
    return form.field(name.encode())


class _Form:
    """The parts python-multipart's parser reports, by field name."""

    def __init__(self) -> None:
        self.parts: list[tuple[bytes | None, list[bytes]]] = []
        self.header_name = self.header_value = b""
        self.ended = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        if len(self.parts) == MAX_PARTS:  # Each part costs Python calls: bound the work.
            raise MalformedMultipartError(f"more than {MAX_PARTS} parts")
        self.parts.append((None, []))

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            _, parameters = parse_options_header(self.header_value)
            self.parts[-1] = (parameters.get(b"name"), self.parts[-1][1])
        self.header_name = self.header_value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].append(data[start:end])

    def on_end(self) -> None:
        self.ended = True

    def field(self, name: bytes) -> bytes | None:
        for field, chunks in self.parts:
            if field == name:
                return b"".join(chunks)
        return None
