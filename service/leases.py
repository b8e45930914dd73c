"""The writes a claim holder makes, and the recovery of leases whose holder went silent.

Every write after the claim is fenced by the claim's token and the `running` status, so a
worker whose lease was taken away cannot change the experiment any more. Leases are measured
by the database's clock only.
"""

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from service.db import db_now, dialect_of, transaction
from service.models import (
    Attempt,
    AttemptOutcome,
    Checkpoint,
    EpochMetric,
    Experiment,
    ExperimentStatus,
    TrainedModel,
)
from service.queue import Claim
from service.results import EpochResult, Reproducibility, ResumePoint, TrainingResult


@dataclass(frozen=True)
class HeartbeatReply:
    holds_lease: bool
    cancel_requested: bool


def _held_by(claim: Claim):
    """The rows this claim still holds: its experiment, with its token, while running."""
    return (
        Experiment.id == claim.experiment_id,
        Experiment.claim_token == claim.token,
        Experiment.status == ExperimentStatus.RUNNING,
    )


def _fenced_update(
    session: Session, claim: Claim, *conditions: ColumnElement[bool], **values: Any
) -> bool:
    """Update the claimed experiment only while this claim still holds it (and `conditions`)."""
    result = session.execute(
        update(Experiment)
        .where(*_held_by(claim), *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _finish(
    session: Session,
    claim: Claim,
    status: ExperimentStatus,
    outcome: AttemptOutcome,
    *conditions: ColumnElement[bool],
    error: str | None = None,
    **values: Any,
) -> bool:
    """End the run in a final status and close its attempt, only while the claim holds."""
    if not _fenced_update(
        session,
        claim,
        *conditions,
        status=status,
        finished_at=db_now(dialect_of(session)),
        claim_token=None,
        **({"error": error} if error is not None else {}),
        **values,
    ):
        return False
    _end_attempt(session, claim, outcome, error)
    return True


def _end_attempt(session: Session, claim: Claim, outcome: AttemptOutcome, error: str | None = None):
    session.execute(
        update(Attempt)
        .where(Attempt.claim_token == claim.token)
        .values(outcome=outcome.value, finished_at=db_now(dialect_of(session)), error=error)
    )


def load_checkpoint(session_factory: sessionmaker[Session], claim: Claim) -> ResumePoint | None:
    """The last finished epoch and its saved model, when an earlier attempt left one."""
    with transaction(session_factory) as session:
        row = session.execute(
            select(Checkpoint.epoch, Checkpoint.keras_file).where(
                Checkpoint.experiment_id == claim.experiment_id
            )
        ).first()
    return ResumePoint(row.epoch, row.keras_file) if row else None


def start_training(
    session_factory: sessionmaker[Session],
    claim: Claim,
    *,
    device: str,
    backend: str,
    steps_per_epoch: int,
    reproducibility: Reproducibility,
) -> bool:
    """Record where it trains (device and Keras backend), the steps progress counts, and what
    it takes to train it again."""
    with transaction(session_factory) as session:
        return _fenced_update(
            session,
            claim,
            device=device,
            backend=backend,
            steps_per_epoch=steps_per_epoch,
            reproducibility=asdict(reproducibility),
            heartbeat_at=db_now(dialect_of(session)),
        )


def heartbeat(
    session_factory: sessionmaker[Session], claim: Claim, *, epoch: int, step: int
) -> HeartbeatReply:
    """Renew the lease, store where training is, and learn whether a cancel was asked for."""
    with transaction(session_factory) as session:
        row = session.execute(
            update(Experiment)
            .where(*_held_by(claim))
            .values(
                heartbeat_at=db_now(dialect_of(session)), progress_epoch=epoch, progress_step=step
            )
            .returning(Experiment.cancel_requested_at)
            .execution_options(synchronize_session=False)
        ).first()
    if row is None:
        return HeartbeatReply(holds_lease=False, cancel_requested=False)
    return HeartbeatReply(holds_lease=True, cancel_requested=row.cancel_requested_at is not None)


def record_epoch(
    session_factory: sessionmaker[Session], claim: Claim, result: EpochResult, checkpoint: bytes
) -> bool:
    """Commit one finished epoch and its checkpoint together; False, writing nothing, once the
    lease is lost."""
    with transaction(session_factory) as session:
        dialect = dialect_of(session)
        if not _fenced_update(session, claim, heartbeat_at=db_now(dialect)):
            return False
        session.execute(
            insert(EpochMetric).values(
                experiment_id=claim.experiment_id, finished_at=db_now(dialect), **asdict(result)
            )
        )
        upsert = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(Checkpoint)
        values = {"epoch": result.epoch, "keras_file": checkpoint, "created_at": db_now(dialect)}
        session.execute(
            upsert.values(experiment_id=claim.experiment_id, **values).on_conflict_do_update(
                index_elements=[Checkpoint.experiment_id], set_=values
            )
        )
        return True


def complete(
    session_factory: sessionmaker[Session], claim: Claim, result: TrainingResult
) -> ExperimentStatus | None:
    """Store the test metrics and the model and mark the experiment `succeeded`, atomically.

    A cancel asked for while the run was finishing (during the test evaluation, say) was
    answered 202, so it wins: the experiment ends `cancelled` and keeps no model. None once
    the lease is lost.
    """
    with transaction(session_factory) as session:
        if not _finish(
            session,
            claim,
            ExperimentStatus.SUCCEEDED,
            AttemptOutcome.SUCCEEDED,
            Experiment.cancel_requested_at.is_(None),
            test_loss=result.test_loss,
            test_accuracy=result.test_accuracy,
            test_confusion=result.confusion_matrix,
            test_misclassified=result.misclassified,
            stopped_early=result.stopped_early,
            stop_reason=result.stop_reason,
        ):
            if _finish(session, claim, ExperimentStatus.CANCELLED, AttemptOutcome.CANCELLED):
                return ExperimentStatus.CANCELLED
            return None
        session.add(TrainedModel.of(claim.experiment_id, result.keras_file))
        session.execute(delete(Checkpoint).where(Checkpoint.experiment_id == claim.experiment_id))
        return ExperimentStatus.SUCCEEDED


def fail(session_factory: sessionmaker[Session], claim: Claim, *, error: str) -> bool:
    """Mark the experiment `failed` with a readable reason; no retry."""
    with transaction(session_factory) as session:
        return _finish(session, claim, ExperimentStatus.FAILED, AttemptOutcome.FAILED, error=error)


def finish_cancelled(session_factory: sessionmaker[Session], claim: Claim) -> bool:
    """A running experiment stopped on request; it keeps the epochs it finished."""
    with transaction(session_factory) as session:
        return _finish(session, claim, ExperimentStatus.CANCELLED, AttemptOutcome.CANCELLED)


def finish_pruned(session_factory: sessionmaker[Session], claim: Claim, *, reason: str) -> bool:
    """Stopped by its study's pruning rule; keeps its epochs, has no test result or model."""
    with transaction(session_factory) as session:
        if not _finish(
            session,
            claim,
            ExperimentStatus.PRUNED,
            AttemptOutcome.PRUNED,
            stopped_early=True,
            stop_reason=reason,
        ):
            return False
        # Never resumed: its checkpoint would only hold a model's worth of bytes forever.
        session.execute(delete(Checkpoint).where(Checkpoint.experiment_id == claim.experiment_id))
        return True


def _requeue_values() -> dict[str, Any]:
    return {
        "status": ExperimentStatus.QUEUED,
        "claim_token": None,
        "worker_id": None,
        "heartbeat_at": None,
        "progress_epoch": None,
        "progress_step": None,
    }


def release(
    session_factory: sessionmaker[Session], claim: Claim, *, error: str | None = None
) -> bool:
    """Put the experiment back in the queue without spending the attempt (worker shutdown)."""
    with transaction(session_factory) as session:
        if not _fenced_update(
            session, claim, attempts=Experiment.attempts - 1, **_requeue_values()
        ):
            return False
        _end_attempt(session, claim, AttemptOutcome.REQUEUED, error)
        return True


def _lost_values(session: Session, *, give_up: str, max_attempts: int) -> dict[str, Any]:
    """Where a run whose training died goes: cancelled if that was asked for, failed when out
    of attempts, else back to the queue."""
    cancelled = Experiment.cancel_requested_at.is_not(None)
    exhausted = Experiment.attempts >= max_attempts
    return {
        **_requeue_values(),
        "status": case(
            (cancelled, ExperimentStatus.CANCELLED.value),
            (exhausted, ExperimentStatus.FAILED.value),
            else_=ExperimentStatus.QUEUED.value,
        ),
        "finished_at": case((cancelled | exhausted, db_now(dialect_of(session))), else_=None),
        "error": case((exhausted & ~cancelled, give_up), else_=None),
    }


def requeue_lost(
    session_factory: sessionmaker[Session], claim: Claim, *, error: str, max_attempts: int
) -> bool:
    """The training process died: spend the attempt, and fail once none is left."""
    with transaction(session_factory) as session:
        values = _lost_values(
            session,
            give_up=f"{error}; gave up after {max_attempts} attempts",
            max_attempts=max_attempts,
        )
        if not _fenced_update(session, claim, **values):
            return False
        _end_attempt(session, claim, AttemptOutcome.LOST, error)
        return True


def recover_expired_leases(
    session_factory: sessionmaker[Session], *, lease_seconds: float, max_attempts: int
) -> list[int]:
    """Requeue running experiments whose heartbeats stopped, or fail those out of attempts.

    One guarded statement that any worker may run: no leader is needed.
    """
    silent = (
        f"the worker stopped sending heartbeats for {lease_seconds:g} s (killed, stalled or lost)"
    )
    with transaction(session_factory) as session:
        dialect = dialect_of(session)
        values = _lost_values(
            session, give_up=f"{silent} {max_attempts} times", max_attempts=max_attempts
        )
        recovered = list(
            session.scalars(
                update(Experiment)
                .where(
                    Experiment.status == ExperimentStatus.RUNNING,
                    Experiment.heartbeat_at < db_now(dialect, seconds=-lease_seconds),
                )
                .values(values)
                .returning(Experiment.id)
                .execution_options(synchronize_session=False)
            )
        )
        if recovered:
            # Row locks (PostgreSQL) or the write lock (SQLite) keep these unclaimed until
            # commit, so the open attempts of these experiments are exactly the lost ones.
            session.execute(
                update(Attempt)
                .where(Attempt.experiment_id.in_(recovered), Attempt.outcome.is_(None))
                .values(
                    outcome=AttemptOutcome.LOST.value, finished_at=db_now(dialect), error=silent
                )
            )
    return recovered
