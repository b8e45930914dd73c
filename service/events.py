"""Reading the event log: committed status changes and epochs, in an order a client can resume.

Each event's place is its cursor (xid, id). On SQLite writers commit one at a time, so ids
grow in commit order and xid is 0. On PostgreSQL two writers can commit out of id order: a
reader that saw id 8 could later find id 7 commit, and a client resuming after 8 would never
get it. So on PostgreSQL a reader only takes events whose transaction has ended for every
snapshot, those with xid below the snapshot's xmin; every transaction still writing, or yet to
start, has an xid at or above it, so nothing can ever appear behind the cursor.
"""

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Text, cast, func, select, tuple_
from sqlalchemy.orm import Session

from service.db import dialect_of
from service.models import FINAL_STATUSES, EpochMetric, Event, Experiment, ExperimentStatus

# At most this many events per read; a stream reads again at once when a read was full.
BATCH = 200
# Eighteen digits: both numbers fit a 64-bit integer, which is what SQLite can bind. Empty is
# no event yet, as EventSource's empty lastEventId.
CURSOR_PATTERN = r"^(\d{1,18}-\d{1,18})?$"


@dataclass(frozen=True, order=True)
class Cursor:
    """Where an event sits in the log; `Cursor()` is before the first."""

    xid: int = 0
    id: int = 0

    def __str__(self) -> str:
        return f"{self.xid}-{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> "Cursor":
        if not text:
            return cls()
        if re.fullmatch(CURSOR_PATTERN, text) is None:
            raise ValueError(f"{text[:40]!r} is not an event id: expected <number>-<number>")
        xid, id_ = text.split("-")
        return cls(int(xid), int(id_))


@dataclass(frozen=True)
class LoggedEvent:
    cursor: Cursor
    kind: str
    experiment_id: int
    data: dict[str, Any]


@dataclass(frozen=True)
class RunState:
    """What an experiment's row says now: the status, and where training is."""

    experiment_id: int
    status: ExperimentStatus
    started_at: datetime | None
    epoch: int | None
    step: int | None
    steps: int | None
    epochs: int

    @property
    def ended(self) -> bool:
        return self.status in FINAL_STATUSES


def _settled(session: Session) -> ColumnElement[bool]:
    """Events no transaction in flight can precede (see the module's docstring)."""
    if dialect_of(session) != "postgresql":
        return Event.xid >= 0
    xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
    return Event.xid < cast(cast(xmin, Text), BigInteger)


def events_after(
    session: Session, experiment_ids: Sequence[int], after: Cursor
) -> list[LoggedEvent]:
    """Up to BATCH settled events of these experiments after `after`, in cursor order."""
    rows = session.execute(
        select(Event.xid, Event.id, Event.kind, Event.experiment_id, Event.data)
        .where(
            Event.experiment_id.in_(experiment_ids),
            tuple_(Event.xid, Event.id) > tuple_(after.xid, after.id),
            _settled(session),
        )
        .order_by(Event.xid, Event.id)
        .limit(BATCH)
    )
    events = [
        LoggedEvent(Cursor(row.xid, row.id), row.kind, row.experiment_id, row.data) for row in rows
    ]
    return _with_epoch_rows(session, events)


def _with_epoch_rows(session: Session, events: list[LoggedEvent]) -> list[LoggedEvent]:
    """Epoch events with their row's values: the log names the epoch, the row holds the
    numbers exactly (SQLite's JSON functions would round them)."""
    keys = [(e.experiment_id, e.data["epoch"]) for e in events if e.kind == "epoch"]
    if not keys:
        return events
    rows = session.scalars(
        select(EpochMetric).where(tuple_(EpochMetric.experiment_id, EpochMetric.epoch).in_(keys))
    )
    values = {(row.experiment_id, row.epoch): row for row in rows}
    return [
        replace(e, data=e.data | _epoch_values(values[e.experiment_id, e.data["epoch"]]))
        if e.kind == "epoch"
        else e
        for e in events
    ]


def _epoch_values(row: EpochMetric) -> dict[str, Any]:
    return {**asdict(row.result()), "finished_at": row.finished_at}


def run_states(session: Session, condition: ColumnElement[bool]) -> list[RunState]:
    """The state of every experiment that meets `condition`, by id."""
    rows = session.execute(
        select(
            Experiment.id,
            Experiment.status,
            Experiment.started_at,
            Experiment.progress_epoch,
            Experiment.progress_step,
            Experiment.steps_per_epoch,
            Experiment.spec["epochs"].as_integer(),
        )
        .where(condition)
        .order_by(Experiment.id)
    )
    return [
        RunState(
            experiment_id=row[0],
            status=ExperimentStatus(row[1]),
            started_at=row[2],
            epoch=row[3],
            step=row[4],
            steps=row[5],
            epochs=row[6] or 0,
        )
        for row in rows
    ]


def latest_cursor(
    session: Session, experiment_ids: Sequence[int], read: list[LoggedEvent], after: Cursor
) -> Cursor:
    """The newest committed event of these experiments, settled or not, given the events
    just `read` after `after`: once a stream is past it, it has sent all there is."""
    if dialect_of(session) != "postgresql":
        # Every committed event is settled here: a read that was not full read the newest.
        return read[-1].cursor if read else after
    row = session.execute(
        select(Event.xid, Event.id)
        .where(Event.experiment_id.in_(experiment_ids))
        .order_by(Event.xid.desc(), Event.id.desc())
        .limit(1)
    ).first()
    return Cursor() if row is None else Cursor(row.xid, row.id)


def event_at(session: Session, cursor: Cursor) -> LoggedEvent | None:
    """The event a cursor points at, if any (`Cursor()` points at none)."""
    row = session.execute(
        select(Event.kind, Event.experiment_id, Event.data).where(
            Event.xid == cursor.xid, Event.id == cursor.id
        )
    ).first()
    return None if row is None else LoggedEvent(cursor, row.kind, row.experiment_id, row.data)
