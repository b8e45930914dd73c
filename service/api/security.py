"""Who may call the API: bearer keys, and no state change from another site's page.

Keys are kept only as SHA-256 digests and compared in constant time; an experiment records
the digest's prefix as its owner, never the key.
"""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import SettingsDep
from service.api.errors import ErrorResponse, error_content, short
from service.api.paths import PROBE_PATHS, is_prediction

OWNER_DIGITS = 16
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values a browser sends for a page of this origin, or for a typed-in URL.
SAME_ORIGIN_FETCHES = frozenset({"same-origin", "none"})

bearer = HTTPBearer(
    auto_error=False, description="One of API_KEYS, as `Authorization: Bearer <key>`."
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Caller:
    """Who sent the request: `owner` names their key (a digest prefix), None when keyless."""

    owner: str | None


class KeyRing:
    """The accepted keys, as digests; `match` takes the same time whichever key it is."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, key: str) -> str | None:
        """The owner of `key`, or None when it is not one of the keys."""
        offered = _digest(key)
        found = None
        for digest in self._digests:  # No early exit: the time says nothing about the key.
            if hmac.compare_digest(offered, digest):
                found = digest
        return found.hex()[:OWNER_DIGITS] if found else None


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="convlab"' + (f', error="{error}"' if error else "")
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge}
    )


def _is_read(request: Request) -> bool:
    return request.method in SAFE_METHODS or is_prediction(request.url.path)


async def authenticate(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller behind the request's key; 401 when keys are set and it has no valid one."""
    keys: KeyRing = request.app.state.keys
    if not keys:
        return Caller(owner=None)
    if credentials is None:
        if not settings.auth_reads and _is_read(request):
            return Caller(owner=None)
        raise _unauthorized("this API needs a key: send `Authorization: Bearer <key>`")
    owner = keys.match(credentials.credentials)
    if owner is None:
        raise _unauthorized("the API key is not valid", error="invalid_token")
    return Caller(owner=owner)


CallerDep = Annotated[Caller, Depends(authenticate)]


class CrossSiteRefusal:
    """Refuse a state-changing request that a browser sends on behalf of another site's page.

    A page elsewhere can POST a form here without a CORS preflight; browsers mark such a
    request with `Origin` and `Sec-Fetch-Site`. curl and API clients send neither.
    """

    def __init__(self, app: ASGIApp, *, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        reason = self._refusal(Headers(scope=scope))
        if reason is None:
            await self.app(scope, receive, send)
            return
        response = ErrorResponse(
            error_content(scope["path"], reason), status_code=status.HTTP_403_FORBIDDEN
        )
        await response(scope, receive, send)

    def _refusal(self, headers: Headers) -> str | None:
        origin = headers.get("origin")
        if origin is not None:
            if origin.rstrip("/") in self.allowed_origins or _same_origin(origin, headers):
                return None
            return (
                f"a page from {short(origin)} may not change anything here: "
                "add its origin to CORS_ORIGINS to allow it"
            )
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in SAME_ORIGIN_FETCHES:
            return f"a {short(fetch_site)} browser request may not change anything here"
        return None


def _same_origin(origin: str, headers: Headers) -> bool:
    """Whether `origin` is this service as the request addressed it (its own pages)."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == headers.get("host")


class HostCheck(TrustedHostMiddleware):
    """ALLOWED_HOSTS for every path but the probes (PROBE_PATHS), which container health checks
    and load balancers ask for by address."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
