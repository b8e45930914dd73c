"""Following a server-sent event stream to its end, reconnecting with Last-Event-ID when the
connection drops, so that every event arrives once."""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from service.cli.client import ClientError, ConvlabClient, transport_message

# Attempts in a row that may fail before following gives up; any event received resets it.
RECONNECT_ATTEMPTS = 5
RECONNECT_FIRST_DELAY_SECONDS = 0.5
RECONNECT_LONGEST_DELAY_SECONDS = 8.0
STABLE_CONNECTION_SECONDS = 10.0
# Statuses that say "not now" rather than "never": too many streams, a busy database.
RETRYABLE_STATUSES = {502, 503, 504}


@dataclass(frozen=True)
class Event:
    """One event of the stream: its kind, its JSON data, and the id it carried (if any)."""

    kind: str
    data: dict[str, Any]
    id: str | None

    def document(self) -> dict[str, Any]:
        """The event as `--json` prints it, one object a line."""
        return {"event": self.kind, "id": self.id, "data": self.data}


@dataclass(frozen=True)
class Reconnecting:
    """Said before each reconnection: which attempt it is, after how long, and why."""

    attempt: int
    attempts: int
    delay: float
    reason: str


class StreamEndedError(Exception):
    """The server closed the stream before its final event."""


class EventStream:
    """The events of `path` up to and including the first of kind `final`."""

    def __init__(
        self,
        client: ConvlabClient,
        path: str,
        final: str,
        on_reconnect: Callable[[Reconnecting], None] = lambda _: None,
    ) -> None:
        self._client = client
        self._path = path
        self._final = final
        self._on_reconnect = on_reconnect
        self.last_event_id: str | None = None
        self._retry_seconds: float | None = None

    def __iter__(self) -> Iterator[Event]:
        failures = 0
        while True:
            opened = time.monotonic()
            try:
                for event in self._connection():
                    failures = 0
                    yield event
                    if event.kind == self._final:
                        return
                error: Exception = StreamEndedError("the server closed the stream")
            except (httpx.TransportError, ClientError) as caught:
                error = caught
            # A stream the server closed cleanly (its EVENT_STREAM_MAX_SECONDS), or a
            # connection that held a while, was no failure, whatever ended it: only quick
            # failures in a row count towards giving up.
            held = time.monotonic() - opened >= STABLE_CONNECTION_SECONDS
            if held or isinstance(error, StreamEndedError):
                failures = 0
            failures += 1
            self._wait_before_retry(error, failures)

    def _connection(self) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        with self._client.stream(self._path, headers) as response:
            seen_id = ""
            for message in _messages(response):
                if message.retry is not None:
                    self._retry_seconds = message.retry / 1000
                # httpx-sse repeats the last id on every later event, as the SSE spec's
                # "last event ID" does: a new value is what this event carried itself.
                own_id = message.id if message.id and message.id != seen_id else None
                seen_id = message.id
                if own_id is not None:
                    self.last_event_id = own_id
                # A blank line after a ping or a lone `retry:` dispatches an empty message.
                if message.event == "message" and not message.data:
                    continue
                yield Event(kind=message.event, data=_json(message.data), id=own_id)

    def _wait_before_retry(self, error: Exception, failures: int) -> None:
        """Sleep before the next attempt, or raise ClientError once there is none left."""
        if isinstance(error, ClientError) and error.status not in RETRYABLE_STATUSES:
            raise error
        reason = _reason(self._client.url, error)
        if failures > RECONNECT_ATTEMPTS:
            raise ClientError(f"{reason}; gave up after {RECONNECT_ATTEMPTS} reconnections")
        delay = min(
            RECONNECT_FIRST_DELAY_SECONDS * 2 ** (failures - 1), RECONNECT_LONGEST_DELAY_SECONDS
        )
        # The server's own pacing (Retry-After, then the stream's `retry:`) comes first.
        if isinstance(error, ClientError) and error.retry_after is not None:
            delay = error.retry_after
        elif self._retry_seconds is not None:
            delay = self._retry_seconds
        self._on_reconnect(Reconnecting(failures, RECONNECT_ATTEMPTS, delay, reason))
        time.sleep(delay)


def _messages(response: httpx.Response) -> Iterator[ServerSentEvent]:
    """The response's events; one that is no event stream is an error no retry mends."""
    try:
        yield from EventSource(response).iter_sse()
    except SSEError as error:
        raise ClientError(f"{response.request.url} sent no event stream: {error}") from None


def _json(data: str) -> dict[str, Any]:
    try:
        decoded = json.loads(data)
    except ValueError:
        raise ClientError(f"an event's data is not JSON: {data[:100]!r}") from None
    return decoded if isinstance(decoded, dict) else {"value": decoded}


def _reason(url: str, error: Exception) -> str:
    if isinstance(error, httpx.TransportError):
        return transport_message(url, error)
    return str(error)
