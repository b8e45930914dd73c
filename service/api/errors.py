"""The error body every route answers with, and its entries in the OpenAPI document."""

from typing import Any

from pydantic import BaseModel

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
    503: "the database is busy or unreachable; retry after Retry-After seconds",
}


class ErrorRead(BaseModel):
    """What went wrong: a sentence, or for 422 the list of invalid fields."""

    detail: str | list[dict[str, Any]]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error codes."""
    return {code: {"model": ErrorRead, "description": ERROR_DESCRIPTIONS[code]} for code in codes}
