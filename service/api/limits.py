"""A size limit on every request body, refused with a 413 before it is read in full."""

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(limit: int) -> str:
    return f"the request body is over the {limit:,}-byte limit of this route"


class BodyLimit:
    """Bound every body: `limits` by path, `default` elsewhere.

    A declared Content-Length over the limit is answered at once; a chunked body is counted
    as it arrives, and the handler reading it gets a 413.
    """

    def __init__(self, app: ASGIApp, *, default: int, limits: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            message = _too_large(limit) if declared.isdigit() else "invalid Content-Length"
            code = status.HTTP_413_CONTENT_TOO_LARGE if declared.isdigit() else 400
            await JSONResponse({"detail": message}, status_code=code)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(limit))
            return message

        await self.app(scope, counted_receive, send)
