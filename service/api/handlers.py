"""Exception handlers: every error leaves as a short JSON `detail` that says what to do."""

import logging

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.database import DatabaseBusyError

logger = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_SECONDS = 2
# A 422 names each bad field; it repeats a scalar input only when it is this short.
ECHO_LIMIT = 100
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, DatabaseBusyError)


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error_type in UNAVAILABLE:
        app.add_exception_handler(error_type, _database_unavailable)


async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    # The driver's text names hosts and users: it goes to the log, not to the client.
    logger.warning("database unavailable: %s", getattr(error, "orig", None) or error)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": "the database is unavailable or busy: retry shortly"},
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without echoing the input back (it may be megabytes) or its internals."""
    errors = []
    for entry in error.errors():
        short = {key: entry[key] for key in ("type", "loc", "msg") if key in entry}
        echo = entry.get("input")
        if isinstance(echo, str | int | float | bool) and len(repr(echo)) <= ECHO_LIMIT:
            short["input"] = echo
        errors.append(short)
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": errors}
    )


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    if error.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        return await http_exception_handler(request, error)
    # Starlette names the methods of the first route that matched the path only.
    allowed = sorted(_methods_for(request))
    return JSONResponse(
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        content={
            "detail": f"{request.method} is not allowed on {request.url.path}: "
            f"use {', '.join(allowed)}"
        },
        headers={"Allow": ", ".join(allowed)},
    )


def _methods_for(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods
