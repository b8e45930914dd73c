"""The database as the job queue: enqueue, claim and cancel.

What the holder of a claim writes afterwards, and the recovery of expired leases, is in
`service.leases`.
"""

import uuid
from dataclasses import dataclass

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ColumnElement

from service.db import db_now, dialect_of, transaction
from service.models import (
    Attempt,
    Experiment,
    ExperimentStatus,
    Worker,
)
from service.spec import ExperimentSpec

# A GPU worker has a CPU too, so it takes any experiment; a CPU worker leaves `gpu` ones.
CLAIMABLE_DEVICES = {"cpu": ("auto", "cpu"), "gpu": ("auto", "cpu", "gpu")}
NOTIFY_CHANNEL = "convlab_experiments"


class QueueFullError(RuntimeError):
    """The submitter already has MAX_QUEUED experiments waiting or running."""

    def __init__(self, pending: int, limit: int, adding: int = 1) -> None:
        asked = "" if adding == 1 else f" and this request adds {adding}"
        super().__init__(
            f"{pending} of your experiments are queued or running{asked}, the limit is {limit} "
            "(MAX_QUEUED): wait for some to finish, or cancel some"
        )


@dataclass(frozen=True)
class StudyCell:
    """Where an experiment sits in its study: the variant's key and the repeat's number."""

    study_id: int
    variant: str
    repeat: int


@dataclass(frozen=True)
class Claim:
    """A running experiment taken by one worker; its token fences every later write."""

    experiment_id: int
    token: str
    attempt: int
    spec: ExperimentSpec


def enqueue(
    session: Session,
    *,
    name: str | None,
    spec: ExperimentSpec,
    owner: str | None = None,
    max_queued: int | None = None,
    cell: StudyCell | None = None,
) -> Experiment:
    """Insert an experiment as `queued`; it is claimable once the caller's transaction commits.

    With `max_queued`, raises QueueFullError when `owner` already has that many waiting or
    running.
    """
    if max_queued is not None:
        ensure_room(session, owner, adding=1, max_queued=max_queued)
    experiment = Experiment(
        name=name,
        owner=owner,
        status=ExperimentStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        summary=spec.summary().as_dict(),
        requested_device=spec.device,
        study_id=cell.study_id if cell else None,
        variant=cell.variant if cell else None,
        repeat=cell.repeat if cell else None,
    )
    session.add(experiment)
    session.flush()
    if dialect_of(session) == "postgresql":
        # Delivered at commit; idle workers wake at once instead of at their next poll.
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    return experiment


def ensure_room(session: Session, owner: str | None, *, adding: int, max_queued: int) -> None:
    """Raise QueueFullError unless `owner` can have `adding` more experiments waiting."""
    pending = _pending_count(session, owner)
    if pending + adding > max_queued:
        raise QueueFullError(pending, max_queued, adding)


def _pending_count(session: Session, owner: str | None) -> int:
    """The owner's queued and running experiments; on PostgreSQL, one count per owner at a
    time (SQLite's BEGIN IMMEDIATE already serializes writers), so a burst cannot overshoot."""
    if dialect_of(session) == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(owner or ""))))
    pending = (ExperimentStatus.QUEUED, ExperimentStatus.RUNNING)
    same_owner = Experiment.owner == owner if owner is not None else Experiment.owner.is_(None)
    return (
        session.scalar(
            select(func.count())
            .select_from(Experiment)
            .where(same_owner, Experiment.status.in_(pending))
        )
        or 0
    )


def claim_next_experiment(
    session_factory: sessionmaker[Session], *, worker_id: str, worker_device: str
) -> Claim | None:
    """Take the oldest queued experiment this worker can run, in one status-guarded UPDATE."""
    token = str(uuid.uuid4())
    with transaction(session_factory) as session:
        dialect = dialect_of(session)
        candidate = (
            select(Experiment.id)
            .where(
                Experiment.status == ExperimentStatus.QUEUED,
                Experiment.requested_device.in_(CLAIMABLE_DEVICES[worker_device]),
            )
            .order_by(Experiment.id)
            .limit(1)
        )
        values = {
            "status": ExperimentStatus.RUNNING,
            "claim_token": token,
            "worker_id": worker_id,
            "attempts": Experiment.attempts + 1,
            "started_at": func.coalesce(Experiment.started_at, db_now(dialect)),
            "heartbeat_at": db_now(dialect),
            "error": None,
        }
        if dialect == "postgresql":
            # Materialized so the planner cannot re-run the locking subquery per row.
            locked = candidate.with_for_update(skip_locked=True).cte("candidate")
            locked = locked.prefix_with("MATERIALIZED")
            statement = update(Experiment).where(Experiment.id == locked.c.id)
        else:
            # SQLite's BEGIN IMMEDIATE already serializes writers; the status guard stays.
            statement = update(Experiment).where(
                Experiment.id == candidate.scalar_subquery(),
                Experiment.status == ExperimentStatus.QUEUED,
            )
        row = session.execute(
            statement.values(**values)
            .returning(Experiment.id, Experiment.spec)
            .execution_options(synchronize_session=False)
        ).first()
        if row is None:
            return None
        number = (
            session.scalar(
                select(func.coalesce(func.max(Attempt.number), 0)).where(
                    Attempt.experiment_id == row.id
                )
            )
            + 1
        )
        session.execute(
            insert(Attempt).values(
                experiment_id=row.id,
                number=number,
                worker_id=worker_id,
                claim_token=token,
                started_at=db_now(dialect),
            )
        )
        session.execute(update(Worker).where(Worker.id == worker_id).values(experiment_id=row.id))
    return Claim(row.id, token, number, ExperimentSpec.model_validate(row.spec))


def request_cancel(session: Session, experiment_id: int) -> bool:
    """Cancel a queued experiment at once, or ask its worker to stop a running one.

    False when the experiment is neither queued nor running.
    """
    return sum(cancel_where(session, Experiment.id == experiment_id)) == 1


def cancel_where(session: Session, condition: ColumnElement[bool]) -> tuple[int, int]:
    """Cancel the queued experiments that meet `condition` at once and ask the workers of the
    running ones to stop; returns (cancelled, asked to stop)."""
    now = db_now(dialect_of(session))
    cancelled = session.execute(
        update(Experiment)
        .where(condition, Experiment.status == ExperimentStatus.QUEUED)
        .values(status=ExperimentStatus.CANCELLED, cancel_requested_at=now, finished_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    stopping = session.execute(
        update(Experiment)
        .where(condition, Experiment.status == ExperimentStatus.RUNNING)
        .values(cancel_requested_at=func.coalesce(Experiment.cancel_requested_at, now))
        .execution_options(synchronize_session=False)
    ).rowcount
    return cancelled, stopping
