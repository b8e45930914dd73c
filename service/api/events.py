"""Routes for following experiments live: Server-Sent Events from the committed event log."""

import math
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import DatabaseDep, SettingsDep
from service.api.errors import error_responses
from service.api.event_stream import NOTIFIED_POLL_SECONDS, EventStream, Followed, Waiting
from service.api.event_wakeup import experiment_key, study_key
from service.api.experiments import ExperimentId, get_experiment_or_404
from service.api.presenters import experiment_read
from service.api.security import CallerDep, authenticate
from service.api.studies import StudyId, get_study_or_404, read_study
from service.events import CURSOR_PATTERN, Cursor
from service.models import Experiment
from service.schemas import MAX_DATABASE_ID
from service.settings import Settings

router = APIRouter(
    tags=["events"],
    dependencies=[Depends(authenticate)],
    responses=error_responses(401, 403, 404, 422, 503),
)

EVENTS_HELP = (
    "`text/event-stream`. `status` (every change) and `epoch` (each committed epoch) carry an "
    "`id`; send the last one back as `Last-Event-ID` to get exactly the events after it. "
    "`progress` (at most once per worker heartbeat) carries none. `done` holds an ended "
    "experiment's view, as GET /experiments/{id} returns it. A comment line keeps the "
    "connection alive every 15 s."
)
# Typed str, not str | None: a nullable header would be documented as accepting "null".
# Experiments one stream may follow at once: a page of the dashboard's table, and then some.
MAX_FOLLOWED = 100
LastEventId = Annotated[
    str,
    Header(
        alias="Last-Event-ID",
        pattern=CURSOR_PATTERN,
        description="resume after this event: the `id` of the last one received",
    ),
]


async def stream_slot(request: Request, caller: CallerDep) -> AsyncIterator[None]:
    """One of this process's MAX_EVENT_STREAMS (and of the key's MAX_EVENT_STREAMS_PER_KEY)
    for the life of the stream, or a 503."""
    slots = request.app.state.event_slots
    slots.take(caller.owner)
    try:
        yield
    finally:
        slots.give_back(caller.owner)


def resume_cursor(last_event_id: LastEventId = "") -> Cursor:
    return Cursor.parse(last_event_id)


def _experiment_view(lease_seconds: float):
    def view(session: Session, experiment_id: int) -> BaseModel:
        experiment = get_experiment_or_404(session, experiment_id)
        return experiment_read(session, experiment, lease_seconds=lease_seconds)

    return view


# The checks are dependencies: a stream's body only runs once its 200 has gone out.
async def followed_experiment(
    experiment_id: ExperimentId, database: DatabaseDep, settings: SettingsDep
) -> Followed:
    """What an experiment's stream follows, or a 404."""
    await database.read(lambda session: get_experiment_or_404(session, experiment_id))
    return Followed(
        (experiment_key(experiment_id),),
        Experiment.id == experiment_id,
        _experiment_view(settings.lease_seconds),
    )


async def followed_study(
    study_id: StudyId, database: DatabaseDep, settings: SettingsDep
) -> Followed:
    """What a study's stream follows, or a 404."""
    await database.read(lambda session: get_study_or_404(session, study_id))
    return Followed(
        (study_key(study_id),),
        Experiment.study_id == study_id,
        _experiment_view(settings.lease_seconds),
        end_view=lambda session: read_study(session, study_id),
    )


class FollowedSetEnd(BaseModel):
    """The `end` of a stream of several experiments: every one of them has ended."""

    experiment_ids: list[int]


FollowedIds = Annotated[
    list[Annotated[int, Field(ge=1, le=MAX_DATABASE_ID)]],
    Query(
        alias="experiment_id",
        min_length=1,
        max_length=MAX_FOLLOWED,
        description=f"an experiment to follow; repeat for each, up to {MAX_FOLLOWED}",
    ),
]


async def followed_set(
    experiment_ids: FollowedIds, database: DatabaseDep, settings: SettingsDep
) -> Followed:
    """What a stream of several experiments follows, or a 404 naming those that do not exist."""
    ids = sorted(set(experiment_ids))

    def missing(session: Session) -> list[int]:
        found = set(session.scalars(select(Experiment.id).where(Experiment.id.in_(ids))))
        return [experiment_id for experiment_id in ids if experiment_id not in found]

    absent = await database.read(missing)
    if absent:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"experiment {', '.join(map(str, absent))} does not exist: GET /experiments lists them",
        )
    return Followed(
        tuple(experiment_key(experiment_id) for experiment_id in ids),
        Experiment.id.in_(ids),
        _experiment_view(settings.lease_seconds),
        end_view=lambda _session: FollowedSetEnd(experiment_ids=ids),
    )


async def _follow(
    request: Request, settings: Settings, followed: Followed, cursor: Cursor
) -> AsyncIterator[ServerSentEvent]:
    state = request.app.state
    poll_seconds = (
        NOTIFIED_POLL_SECONDS if state.event_listener_active else settings.event_poll_seconds
    )
    limit = settings.event_stream_max_seconds
    with state.event_wakeup.subscription(followed.keys) as woken:
        waiting = Waiting(
            woken,
            state.shutdown.stopping,
            poll_seconds,
            request.is_disconnected,
            deadline=time.monotonic() + limit if limit else math.inf,
        )
        async for event in EventStream(state.database, followed, cursor).events(waiting):
            yield event


@router.get(
    "/experiments/{experiment_id}/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(stream_slot)],
    description=EVENTS_HELP,
)
async def experiment_events(
    request: Request,
    settings: SettingsDep,
    followed: Annotated[Followed, Depends(followed_experiment)],
    cursor: Annotated[Cursor, Depends(resume_cursor)],
) -> AsyncIterator[ServerSentEvent]:
    """Follow one experiment: its history after `Last-Event-ID`, then live, then `done`."""
    async for event in _follow(request, settings, followed, cursor):
        yield event


@router.get(
    "/studies/{study_id}/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(stream_slot)],
    description=EVENTS_HELP
    + " A study's stream carries every experiment's events, a `done` as each ends, and "
    "`end` with the study view once all have, after which it closes.",
)
async def study_events(
    request: Request,
    settings: SettingsDep,
    followed: Annotated[Followed, Depends(followed_study)],
    cursor: Annotated[Cursor, Depends(resume_cursor)],
) -> AsyncIterator[ServerSentEvent]:
    """Follow every experiment of a study, multiplexed, until all have ended."""
    async for event in _follow(request, settings, followed, cursor):
        yield event


@router.get(
    "/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(stream_slot)],
    description=EVENTS_HELP
    + " This stream carries the events of every experiment named, a `done` as each ends, and "
    "`end` (the ids) once all have, after which it closes: one connection for a whole table.",
)
async def experiments_events(
    request: Request,
    settings: SettingsDep,
    followed: Annotated[Followed, Depends(followed_set)],
    cursor: Annotated[Cursor, Depends(resume_cursor)],
) -> AsyncIterator[ServerSentEvent]:
    """Follow several experiments at once, multiplexed, until all have ended."""
    async for event in _follow(request, settings, followed, cursor):
        yield event
