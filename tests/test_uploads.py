"""Reading the one field a prediction needs out of a multipart form."""

import pytest

from service.api.uploads import MalformedMultipartError, multipart_field

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes], filename: bool = True) -> bytes:
    body = b""
    for name, content in parts:
        disposition = f'form-data; name="{name}"' + ('; filename="x.png"' if filename else "")
        body += (
            (
                f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()


def test_the_named_field_is_found_among_others_byte_for_byte():
    image = bytes(range(256)) * 3 + b"\r\n--not-the-boundary\r\n"
    body = form(("note", b"a garment"), ("image", image), ("other", b"x"))
    assert multipart_field(body, CONTENT_TYPE, "image") == image
    assert multipart_field(body, CONTENT_TYPE, "note") == b"a garment"


def test_a_quoted_boundary_and_a_plain_field_are_read():
    body = form(("image", b"pixels"), filename=False)
    content_type = f'multipart/form-data; boundary="{BOUNDARY}"'
    assert multipart_field(body, content_type, "image") == b"pixels"


def test_a_missing_field_is_none():
    assert multipart_field(form(("picture", b"x")), CONTENT_TYPE, "image") is None


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (form(("image", b"x")), "multipart/form-data", "names no boundary"),
        (form(("image", b"x"))[:-12], CONTENT_TYPE, "ends before its closing boundary"),
        (b"just some bytes", CONTENT_TYPE, "Expected boundary"),
    ],
)
def test_malformed_forms_are_refused(body, content_type, message):
    with pytest.raises(MalformedMultipartError, match=message):
        multipart_field(body, content_type, "image")
