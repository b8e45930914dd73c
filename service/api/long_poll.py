"""GET /experiments/{id}?wait=: hold the answer until the experiment's status changes, for
clients that cannot read an event stream. No database connection is held while it waits."""

import asyncio
import contextlib
import time

from fastapi import Request
from sqlalchemy import select

from service.api.database import Database
from service.models import FINAL_STATUSES, Experiment, ExperimentStatus

MAX_WAIT_SECONDS = 60
# How often a waiting request reads the status: one short read, from a pooled connection.
POLL_SECONDS = 0.5


async def wait_for_change(
    request: Request,
    database: Database,
    experiment_id: int,
    *,
    changed_from: ExperimentStatus | None,
    seconds: float,
) -> None:
    """Return once the status differs from `changed_from` (by default the status now), the
    experiment has ended, `seconds` have passed, the client has gone, or the server is
    stopping."""
    deadline = time.monotonic() + seconds
    # A server told to stop answers at once rather than hold its shutdown for the wait.
    stopping = request.app.state.shutdown.stopping
    current = await _status(database, experiment_id)
    seen = changed_from or current
    while current == seen and current not in FINAL_STATUSES and current is not None:
        left = deadline - time.monotonic()
        if left <= 0 or stopping.is_set() or await request.is_disconnected():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), min(POLL_SECONDS, left))
        current = await _status(database, experiment_id)


async def _status(database: Database, experiment_id: int) -> ExperimentStatus | None:
    status = await database.read(
        lambda session: session.scalar(
            select(Experiment.status).where(Experiment.id == experiment_id)
        )
    )
    return None if status is None else ExperimentStatus(status)
