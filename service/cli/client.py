"""The HTTP side of `convlab`: one httpx.Client that knows the service's address and key, and
one error type that carries the server's own message."""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# Every route but the event stream answers in well under this; a long poll is never used.
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# The stream sends a ping every 15 s: three missed ones mean the connection is dead.
STREAM_TIMEOUT = httpx.Timeout(5.0, read=45.0)


class ClientError(Exception):
    """What to tell the user: the server's message, or why the service could not be reached.
    `status` is the HTTP status (None when no answer came), `retry_after` its Retry-After."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Connection:
    """Where the service is and the key it takes."""

    url: str
    api_key: str | None

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] = os.environ) -> Self:
        """CONVLAB_URL (default http://127.0.0.1:8000) and CONVLAB_API_KEY."""
        url = environment.get("CONVLAB_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")) or not _host(url):
            raise ClientError(f"CONVLAB_URL must be http(s)://host[:port], not {url!r}")
        return cls(url=url.rstrip("/"), api_key=environment.get("CONVLAB_API_KEY") or None)


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return ""


def server_message(response: httpx.Response) -> str:
    """The `detail` of the service's JSON error body, in one line."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail:
        return " ".join(detail.split())
    if isinstance(detail, list) and detail:
        # FastAPI's 422: one entry per invalid field, located from the body or the query.
        return "invalid request: " + "; ".join(
            f"{'.'.join(str(part) for part in entry.get('loc', [])[1:]) or 'body'}: "
            f"{entry.get('msg', 'invalid')}"
            for entry in detail
            if isinstance(entry, dict)
        )
    return f"{response.status_code} {response.reason_phrase} from {response.request.url}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def transport_message(url: str, error: httpx.TransportError) -> str:
    """Why no answer came, in words a user can act on."""
    if isinstance(error, httpx.ConnectError):
        return f"cannot reach {url}: is the service running? (`make up`)"
    if isinstance(error, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(error).__name__})"
    return f"lost the connection to {url}: {error or type(error).__name__}"


class ConvlabClient:
    """The service's routes as JSON in, JSON out; every failure is a ClientError."""

    def __init__(self, connection: Connection) -> None:
        self.url = connection.url
        headers = {"Accept": "application/json"}
        if connection.api_key:
            headers["Authorization"] = f"Bearer {connection.api_key}"
        self._http = httpx.Client(base_url=connection.url, headers=headers, timeout=REQUEST_TIMEOUT)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._http.close()

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """The answer to one request; an error status or no answer raises ClientError."""
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as error:
            raise ClientError(transport_message(self.url, error)) from None
        raise_for_status(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        given = {name: value for name, value in params.items() if value is not None}
        return self.json(self.request("GET", path, params=given))

    def post(self, path: str, body: Any = None) -> Any:
        return self.json(self.request("POST", path, json=body))

    def json(self, response: httpx.Response) -> Any:
        """The answer's JSON; anything else means CONVLAB_URL names some other server."""
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{response.request.url} answered {response.headers.get('content-type')!r}, "
                "not JSON: is CONVLAB_URL the convlab service?"
            ) from None

    @contextmanager
    def stream(self, path: str, headers: Mapping[str, str]) -> Iterator[httpx.Response]:
        """A streamed GET; transport errors pass through raw, for the caller to reconnect."""
        with self._http.stream("GET", path, headers=headers, timeout=STREAM_TIMEOUT) as response:
            if response.is_error:
                response.read()
                raise_for_status(response)
            yield response


def raise_for_status(response: httpx.Response) -> None:
    if response.is_error:
        raise ClientError(
            server_message(response),
            status=response.status_code,
            retry_after=_retry_after(response),
        )
