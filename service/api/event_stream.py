"""An event stream's life: replay the log after the client's cursor, then wait and read again.

A stream holds no database connection while it waits: each read is one short transaction
through the API's read slots, and waiting is an asyncio wait on a wake-up, server shutdown or
the poll interval. Status and epoch events come from the event log and carry an id; progress
comes from the experiment row and carries none; `done` (per experiment) and `end` (a study's)
close the story.
"""

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import HTTPException, status
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel
from sqlalchemy import ColumnElement
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.api.database import Database, DatabaseBusyError
from service.events import (
    BATCH,
    Cursor,
    LoggedEvent,
    RunState,
    event_at,
    events_after,
    latest_cursor,
    run_states,
)
from service.metrics import EVENT_STREAMS
from service.models import FINAL_STATUSES
from service.schemas import EpochEventRead, ProgressEventRead, StatusEventRead

# Streams past MAX_EVENT_STREAMS are told to come back after this long.
RETRY_AFTER_SECONDS = 5
# On PostgreSQL notifications wake streams; polling only covers a lost listener.
NOTIFIED_POLL_SECONDS = 5.0
# How soon a stream looks again for an event committed behind a transaction still open.
SETTLING_POLL_SECONDS = 0.2
EVENT_DATA = {"status": StatusEventRead, "epoch": EpochEventRead}

logger = logging.getLogger(__name__)


class StreamSlots:
    """How many streams this process has open, in all and per API key, up to limits."""

    def __init__(self, limit: int, per_key: int) -> None:
        self.limit = limit
        self.per_key = per_key
        self.open = 0
        self._by_key: Counter[str] = Counter()

    def take(self, owner: str | None) -> None:
        if self.open >= self.limit:
            raise _too_many(
                f"this server already holds {self.limit} event streams (MAX_EVENT_STREAMS)"
            )
        if owner is not None and self._by_key[owner] >= self.per_key:
            raise _too_many(
                f"this key already holds {self.per_key} event streams (MAX_EVENT_STREAMS_PER_KEY)"
            )
        self.open += 1
        if owner is not None:
            self._by_key[owner] += 1
        EVENT_STREAMS.inc()

    def give_back(self, owner: str | None) -> None:
        self.open -= 1
        if owner is not None:
            self._by_key[owner] -= 1
            if not self._by_key[owner]:
                del self._by_key[owner]
        EVENT_STREAMS.dec()


def _too_many(reason: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"{reason}: retry in {RETRY_AFTER_SECONDS} s, or long-poll GET /experiments/{{id}}?wait=",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@dataclass(frozen=True)
class Followed:
    """What a stream follows: the experiments that meet `condition`, and how it ends."""

    keys: tuple[str, ...]  # Its wake-up keys (service/api/event_wakeup.py).
    condition: ColumnElement[bool]
    view: Callable[[Session, int], BaseModel]
    # A study's (or a set's) stream ends with `end` and this view; an experiment's ends with
    # its `done`.
    end_view: Callable[[Session], BaseModel] | None = None


@dataclass(frozen=True)
class Reading:
    states: list[RunState]
    events: list[LoggedEvent]
    latest: Cursor


@dataclass
class Waiting:
    """What a stream waits on between reads."""

    woken: asyncio.Event
    stopping: asyncio.Event
    poll_seconds: float
    client_gone: Callable[[], Awaitable[bool]]
    # The monotonic time to close the stream at; the client then resumes where it was.
    deadline: float = math.inf

    async def until_next_read(self, *, soon: bool = False) -> bool:
        """Wait for a wake-up or the poll interval (SETTLING_POLL_SECONDS when `soon`); False
        once the stream should end."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        waits = [
            asyncio.ensure_future(self.woken.wait()),
            asyncio.ensure_future(self.stopping.wait()),
        ]
        poll = min(self.poll_seconds, SETTLING_POLL_SECONDS) if soon else self.poll_seconds
        try:
            await asyncio.wait(waits, timeout=min(poll, left), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the stream is cancelled here (its client left): no waiter outlives it.
            for wait in waits:
                wait.cancel()
        self.woken.clear()
        return not self.stopping.is_set() and not await self.client_gone()


@dataclass
class EventStream:
    database: Database
    followed: Followed
    cursor: Cursor
    shown_progress: dict[int, tuple[int, int]] = field(default_factory=dict)
    done_sent: set[int] = field(default_factory=set)

    def _read(self, session: Session) -> Reading:
        states = run_states(session, self.followed.condition)
        ids = [state.experiment_id for state in states]
        events = events_after(session, ids, self.cursor)
        return Reading(states, events, latest_cursor(session, ids, events, self.cursor))

    async def events(self, waiting: Waiting) -> AsyncIterator[ServerSentEvent]:
        """The stream's events; a database error ends it quietly, as the client resumes."""
        try:
            async for event in self._events(waiting):
                yield event
        except (DatabaseBusyError, SQLAlchemyError) as error:
            logger.warning("an event stream ended on a database error: %s", error)

    async def _events(self, waiting: Waiting) -> AsyncIterator[ServerSentEvent]:
        single = self.followed.end_view is None
        missed = await self._done_missed_before()
        if missed is not None:
            yield missed
            if single:
                return
        while True:
            reading = await self.database.read(self._read)
            for event in reading.events:
                yield logged_event(event)
                self.cursor = event.cursor
                if _is_end(event):
                    yield await self._done(event.experiment_id)
                    if single:
                        return
            if len(reading.events) == BATCH:
                continue  # More history is waiting: read it before anything else.
            if self._all_sent(reading):
                async for closing in self._closing(reading):
                    yield closing
                return
            for progress in self._progress(reading.states):
                yield progress
            # An event committed behind an older transaction still open (PostgreSQL) is
            # there to send as soon as that one ends: look again soon.
            if not await waiting.until_next_read(soon=reading.latest > self.cursor):
                return

    async def _done_missed_before(self) -> ServerSentEvent | None:
        """The `done` of a client that resumes right after an experiment's final status: the
        `done` that followed it carried no id, so the client may never have got it."""
        if self.cursor == Cursor():
            return None
        resumed_at = await self.database.read(lambda session: event_at(session, self.cursor))
        if resumed_at is None or not _is_end(resumed_at):
            return None
        return await self._done(resumed_at.experiment_id)

    async def _done(self, experiment_id: int) -> ServerSentEvent:
        view = await self.database.read(lambda session: self.followed.view(session, experiment_id))
        self.done_sent.add(experiment_id)
        return ServerSentEvent(event="done", data=view)

    async def _closing(self, reading: Reading) -> AsyncIterator[ServerSentEvent]:
        """Once every experiment has ended and every event is sent: a study's `end`; for one
        experiment whose end came before the client's cursor, its `done`."""
        end_view = self.followed.end_view
        if end_view is not None:
            yield ServerSentEvent(event="end", data=await self.database.read(end_view))
            return
        for state in reading.states:
            if state.experiment_id not in self.done_sent:
                yield await self._done(state.experiment_id)

    def _all_sent(self, reading: Reading) -> bool:
        """Every experiment has ended and the client has every event there is."""
        return all(state.ended for state in reading.states) and reading.latest <= self.cursor

    def _progress(self, states: list[RunState]) -> list[ServerSentEvent]:
        """A `progress` event for each running experiment that has moved since the last."""
        now = datetime.now(UTC)
        events = []
        for state in states:
            # Epoch 0 is the set-up before the first batch: nothing to show yet.
            if state.ended or not state.epoch or state.started_at is None:
                continue
            place = (state.epoch, state.step or 0)
            if self.shown_progress.get(state.experiment_id) == place:
                continue
            self.shown_progress[state.experiment_id] = place
            progress = ProgressEventRead(
                experiment_id=state.experiment_id,
                epoch=place[0],
                epochs=state.epochs,
                step=place[1],
                steps=state.steps or 0,
                seconds=round((now - state.started_at).total_seconds(), 3),
            )
            events.append(ServerSentEvent(event="progress", data=progress))
        return events


def _is_end(event: LoggedEvent) -> bool:
    return event.kind == "status" and event.data["status"] in FINAL_STATUSES


def logged_event(event: LoggedEvent) -> ServerSentEvent:
    """A logged event as sent: its data through its view model, its cursor as the id."""
    data = EVENT_DATA[event.kind].model_validate(event.data)
    return ServerSentEvent(event=event.kind, id=str(event.cursor), data=data)
