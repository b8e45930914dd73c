"""A size limit on every request body, refused with a 413 before it is read in full."""

import asyncio
import time

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ErrorResponse, error_content
from service.api.paths import is_prediction

# Long enough for 5 MiB over a slow link; short enough that trickled bodies do not pile up.
BODY_READ_SECONDS = 60


def _too_large(limit: int) -> str:
    return f"the request body is over the {limit:,}-byte limit of this route"


class BodyLimit:
    """Bound every body (`upload` on prediction routes, `default` elsewhere) and its arrival.

    A declared Content-Length over the limit is answered at once; a chunked body is counted
    as it arrives, and the handler reading it gets a 413. A body still arriving after
    BODY_READ_SECONDS gets a 408, so a client that trickles bytes cannot hold memory for good.
    """

    def __init__(self, app: ASGIApp, *, default: int, upload: int) -> None:
        self.app = app
        self.default = default
        self.upload = upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.upload if is_prediction(path) else self.default
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            refusal = _declared_refusal(declared, limit, path)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, _bounded(receive, limit), send)


def _declared_refusal(declared: str, limit: int, path: str) -> ErrorResponse | None:
    # Twenty digits are past any body; int() is never asked to read a long string.
    if not (declared.isascii() and declared.isdigit() and len(declared) <= 20):
        return ErrorResponse(error_content(path, "invalid Content-Length"), status_code=400)
    if int(declared) > limit:
        return ErrorResponse(
            error_content(path, _too_large(limit)),
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
    return None


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive`, refusing a body past `limit` bytes or still arriving after the deadline."""
    received = 0
    complete = False
    deadline = time.monotonic() + BODY_READ_SECONDS

    async def bounded_receive() -> Message:
        nonlocal received, complete
        if complete:  # After the body, receive() only waits for a disconnect: no deadline.
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise HTTPException(
                status.HTTP_408_REQUEST_TIMEOUT,
                f"the body did not arrive within {BODY_READ_SECONDS} s",
            ) from None
        received += len(message.get("body", b""))
        if received > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(limit))
        complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return bounded_receive
