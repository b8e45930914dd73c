"""Studies in the database: created in one transaction, read back as StudyRuns, cancelled."""

import json

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from service import queue
from service.db import db_now, dialect_of
from service.models import Experiment, ExperimentStatus, Study
from service.spec import ExperimentSpec
from service.studies.request import Cell, StudyCreate
from service.studies.runs import StudyRun


def create_study(
    session: Session,
    study: StudyCreate,
    cells: list[Cell],
    *,
    owner: str | None,
    idempotency_key: str | None,
    max_queued: int,
) -> Study:
    """The study and every cell's experiment, or nothing: the caller's transaction holds both."""
    queue.ensure_room(session, owner, adding=len(cells), max_queued=max_queued)
    row = Study(
        name=study.name,
        owner=owner,
        request=study.model_dump(mode="json"),
        varied=study.varied(),
        prune=study.prune.model_dump(mode="json") if study.prune else None,
        idempotency_key=scoped_key(owner, idempotency_key) if idempotency_key else None,
    )
    session.add(row)
    session.flush()
    for cell in cells:
        queue.enqueue(
            session,
            name=f"{study.name} {cell.variant}"[:200],
            spec=cell.spec,
            owner=owner,
            cell=queue.StudyCell(row.id, cell.variant, cell.repeat),
        )
    return row


def scoped_key(owner: str | None, idempotency_key: str) -> str:
    """Keys are per API key: two callers may both use "run-1"."""
    return f"{owner or '-'}/{idempotency_key}"


def study_for_key(session: Session, owner: str | None, idempotency_key: str) -> Study | None:
    """The study an earlier POST with this key made. On PostgreSQL a POST racing it with the
    same key waits here, under a lock on the key, until that one commits, and then finds its
    study (SQLite's BEGIN IMMEDIATE already serializes writers)."""
    scoped = scoped_key(owner, idempotency_key)
    if dialect_of(session) == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(scoped))))
    return session.scalar(select(Study).where(Study.idempotency_key == scoped))


def status_counts(session: Session, study_id: int) -> dict[str, int]:
    """How many of the study's experiments are in each status, every status listed."""
    return status_counts_of(session, [study_id])[study_id]


def status_counts_of(session: Session, study_ids: list[int]) -> dict[int, dict[str, int]]:
    """`status_counts` for each of the studies, in one query."""
    counted: dict[int, dict[str, int]] = {
        study_id: {status.value: 0 for status in ExperimentStatus} for study_id in study_ids
    }
    rows = session.execute(
        select(Experiment.study_id, Experiment.status, func.count())
        .where(Experiment.study_id.in_(study_ids))
        .group_by(Experiment.study_id, Experiment.status)
    )
    for study_id, status, count in rows:
        counted[study_id][ExperimentStatus(status).value] = count
    return counted


def study_status(study: Study, counts: dict[str, int]) -> str:
    """queued (nothing started), running, cancelled (by request, nothing left) or finished."""
    pending = counts["queued"] + counts["running"]
    if pending == sum(counts.values()) and counts["running"] == 0:
        return "queued"
    if pending:
        return "running"
    return "cancelled" if study.cancel_requested_at is not None else "finished"


def study_runs(session: Session, study_id: int) -> list[StudyRun]:
    """Every experiment of the study with its epochs, in the order they were created."""
    experiments = session.scalars(
        select(Experiment)
        .where(Experiment.study_id == study_id)
        .options(selectinload(Experiment.epochs))
        .order_by(Experiment.id)
    )
    return [_run(experiment) for experiment in experiments]


def _run(experiment: Experiment) -> StudyRun:
    spec = ExperimentSpec.model_validate(experiment.spec)
    summary = experiment.summary
    return StudyRun(
        experiment_id=experiment.id,
        variant=experiment.variant or "{}",
        params=json.loads(experiment.variant or "{}"),
        device=experiment.requested_device,
        repeat=experiment.repeat or 0,
        seed=spec.seed or 0,
        status=experiment.status.value,
        total_params=summary["total_params"],
        flatten_size=summary["flatten_size"],
        activation_bytes_per_batch=summary["activation_bytes_per_batch"],
        test_accuracy=experiment.test_accuracy,
        test_loss=experiment.test_loss,
        epochs=tuple(metric.result() for metric in experiment.epochs),
        stop_metric=spec.stop.metric if spec.stop else None,
        stop_threshold=spec.stop.threshold if spec.stop else None,
    )


def cancel_study(session: Session, study: Study) -> tuple[int, int]:
    """Cancel the queued experiments at once and ask the running ones to stop, as
    POST /experiments/{id}/cancel does one by one; returns (cancelled, stopping)."""
    session.execute(
        update(Study)
        .where(Study.id == study.id, Study.cancel_requested_at.is_(None))
        .values(cancel_requested_at=db_now(dialect_of(session)))
        .execution_options(synchronize_session=False)
    )
    return queue.cancel_where(session, Experiment.study_id == study.id)
