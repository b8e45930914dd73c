"""Exception handlers: every error leaves as a short JSON `detail` that says what to do (on the
serving protocols' routes, as their `error`)."""

import logging
import math

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.database import DatabaseBusyError
from service.api.errors import ECHO_LIMIT, ErrorResponse, error_content, error_status, short
from service.api.paths import speaks_protocol
from service.queue import QueueFullError

logger = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_SECONDS = 2
# A full queue empties at the pace of training: far slower than a busy database.
QUEUE_FULL_RETRY_AFTER_SECONDS = 30
CANDIDATE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, DatabaseBusyError)


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(QueueFullError, _queue_full)
    for error_type in UNAVAILABLE:
        app.add_exception_handler(error_type, _database_unavailable)


async def _database_unavailable(request: Request, error: Exception) -> ErrorResponse:
    # The driver's text names hosts and users: it goes to the log, not to the client.
    logger.warning("database unavailable: %s", getattr(error, "orig", None) or error)
    return ErrorResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content=error_content(
            request.url.path, "the database is unavailable or busy: retry shortly"
        ),
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _queue_full(_request: Request, error: QueueFullError) -> ErrorResponse:
    """The caller's queued and running experiments would pass MAX_QUEUED; nothing was added."""
    return ErrorResponse(
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        content={"detail": str(error)},
        headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_SECONDS)},
    )


async def _invalid_request(request: Request, error: RequestValidationError) -> ErrorResponse:
    """FastAPI's 422, without echoing the input back (it may be megabytes) or its internals."""
    errors = []
    for entry in error.errors():
        brief = {key: entry[key] for key in ("type", "msg") if key in entry}
        brief["loc"] = [short(part) if isinstance(part, str) else part for part in entry["loc"]]
        echo = entry.get("input")
        if _echoable(echo):
            brief["input"] = echo
        errors.append(brief)
    return ErrorResponse(
        status_code=error_status(request.url.path, status.HTTP_422_UNPROCESSABLE_CONTENT),
        content=error_content(request.url.path, errors),
    )


def _echoable(value: object) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False  # JSON has no NaN or Infinity.
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= ECHO_LIMIT


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    if error.status_code == status.HTTP_400_BAD_REQUEST and error.__cause__ is not None:
        # FastAPI's own "There was an error parsing the body" does not say what the error is.
        reason = str(error.__cause__)[:ECHO_LIMIT] or type(error.__cause__).__name__
        return ErrorResponse(
            status_code=status.HTTP_400_BAD_REQUEST,
            content=error_content(request.url.path, f"the body cannot be read as JSON: {reason}"),
        )
    if speaks_protocol(request.url.path) and error.status_code != 405:
        return ErrorResponse(
            status_code=error_status(request.url.path, error.status_code),
            content=error_content(request.url.path, error.detail),
            headers=error.headers,
        )
    if error.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        return await http_exception_handler(request, error)
    # Starlette names the methods of the first route that matched the path only.
    allowed = sorted(_methods_for(request)) or [
        method.strip() for method in (error.headers or {}).get("Allow", "").split(",")
    ]
    return ErrorResponse(
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        content=error_content(
            request.url.path,
            f"{request.method} is not allowed on {short(request.url.path)}: "
            f"use {', '.join(allowed)}",
        ),
        headers={"Allow": ", ".join(allowed)},
    )


def _methods_for(request: Request) -> set[str]:
    """The methods some route of the app takes on this path (routers nest, so ask each)."""
    return {
        method
        for method in CANDIDATE_METHODS
        for route in request.app.router.routes
        if route.matches({**request.scope, "method": method})[0] == Match.FULL
    }
