"""The error body every route answers with, and its entries in the OpenAPI document."""

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.paths import speaks_protocol

# An error repeats what the client sent (a path, an Origin, a field name) only this far.
ECHO_LIMIT = 100

ERROR_DESCRIPTIONS = {
    400: "the body cannot be read: not UTF-8, not JSON, or nested too deeply",
    401: "no API key, or a wrong one",
    403: "refused: a cross-site browser request",
    404: "no such experiment",
    405: "the path does not take this method",
    409: "the experiment is not in a state that allows this",
    413: "the body or image is over its limit",
    415: "the content type is not one the route reads",
    422: "the input is invalid; detail says what and where",
    429: "too many experiments queued for this key; retry after Retry-After seconds",
    503: "the database is busy or unreachable, or the server holds MAX_EVENT_STREAMS streams; "
    "retry after Retry-After seconds",
}


PROTOCOL_ERROR_DESCRIPTIONS = {
    400: "the request breaks the protocol or does not fit the model; error says how",
    404: "no such model, or no such version of it",
    503: "the model's experiment has not succeeded (yet), or the database is busy or unreachable",
}


class ErrorRead(BaseModel):
    """What went wrong: a sentence, or for 422 the list of invalid fields."""

    detail: str | list[dict[str, Any]]


class ProtocolErrorRead(BaseModel):
    """What went wrong, as the serving protocols say it."""

    error: str


def error_content(path: str, detail: str | list[dict[str, Any]]) -> dict[str, Any]:
    """The error body for a route at `path`: {"detail": ...}, or a protocol's {"error": ...}."""
    if not speaks_protocol(path):
        return {"detail": detail}
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
    return {"error": detail}


def error_status(path: str, status_code: int) -> int:
    """The status for an error at `path`: the serving protocols answer invalid input with a 400
    (TensorFlow Serving's INVALID_ARGUMENT; Triton's too) and never with a 422."""
    if status_code == 422 and speaks_protocol(path):
        return 400
    return status_code


def protocol_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for a serving protocol's error codes."""
    schema = {"$ref": "#/components/schemas/ProtocolErrorRead"}
    return {
        code: {
            "model": ProtocolErrorRead,
            "description": PROTOCOL_ERROR_DESCRIPTIONS.get(code, ERROR_DESCRIPTIONS[code]),
            "content": {"application/json": {"schema": schema}},
        }
        for code in codes
    }


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error codes."""
    return {
        code: {
            "model": ErrorRead,
            "description": ERROR_DESCRIPTIONS[code],
            # Said outright: FastAPI would give the model the route's own media type, which
            # for an event stream is text/event-stream, while errors are JSON everywhere.
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorRead"}}},
        }
        for code in codes
    }


class ErrorResponse(JSONResponse):
    """An error body in ASCII: what it repeats of the input may hold lone surrogates or any
    other text that UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def short(text: str) -> str:
    """Client-supplied text, cut to ECHO_LIMIT characters for an error message."""
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"
