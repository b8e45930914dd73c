"""The database as the job queue: enqueue, claim, report, finish and recover experiments.

Every write a worker makes after its claim is fenced by the claim's token and the `running`
status, so a worker whose lease was taken away cannot change the experiment any more.
"""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models import EpochMetric, Experiment, ExperimentStatus, TrainedModel, utcnow
from service.schemas import ExperimentSpec
from service.training import EpochResult, Progress, TrainingResult

# A GPU worker has a CPU too, so it takes any experiment; a CPU worker leaves `gpu` ones.
CLAIMABLE_DEVICES = {"cpu": ("auto", "cpu"), "gpu": ("auto", "cpu", "gpu")}


@dataclass(frozen=True)
class Claim:
    experiment_id: int
    token: str
    spec: ExperimentSpec


def enqueue(session: Session, *, name: str | None, spec: ExperimentSpec) -> Experiment:
    """Insert an experiment as `queued`; it is claimable once the caller's transaction commits."""
    experiment = Experiment(
        name=name,
        status=ExperimentStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        summary=spec.summary().as_dict(),
        requested_device=spec.device,
        created_at=utcnow(),
    )
    session.add(experiment)
    session.flush()
    return experiment


def claim_next_experiment(
    session_factory: sessionmaker[Session], *, worker_id: str, worker_device: str
) -> Claim | None:
    """Take the oldest queued experiment this worker can run, in one status-guarded UPDATE."""
    candidate = (
        select(Experiment.id)
        .where(
            Experiment.status == ExperimentStatus.QUEUED,
            Experiment.requested_device.in_(CLAIMABLE_DEVICES[worker_device]),
        )
        .order_by(Experiment.id)
        .limit(1)
        # PostgreSQL skips rows another worker is claiming; SQLite's BEGIN IMMEDIATE already
        # serializes claims, and SQLAlchemy renders no FOR UPDATE there.
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    token = str(uuid.uuid4())
    now = utcnow()
    statement = (
        update(Experiment)
        .where(Experiment.id == candidate, Experiment.status == ExperimentStatus.QUEUED)
        .values(
            status=ExperimentStatus.RUNNING,
            claim_token=token,
            worker_id=worker_id,
            attempts=Experiment.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            error=None,
        )
        .returning(Experiment.id, Experiment.spec)
        .execution_options(synchronize_session=False)
    )
    with transaction(session_factory) as session:
        row = session.execute(statement).first()
    if row is None:
        return None
    return Claim(row.id, token, ExperimentSpec.model_validate(row.spec))


def _fenced_update(session: Session, claim: Claim, **values: Any) -> bool:
    """Update the claimed experiment only while this claim still holds it."""
    result = session.execute(
        update(Experiment)
        .where(
            Experiment.id == claim.experiment_id,
            Experiment.claim_token == claim.token,
            Experiment.status == ExperimentStatus.RUNNING,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def start_training(
    session_factory: sessionmaker[Session], claim: Claim, *, device: str, progress: Progress
) -> bool:
    """Record the device and the totals the progress is counted against."""
    with transaction(session_factory) as session:
        return _fenced_update(
            session,
            claim,
            device=device,
            progress_epoch=0,
            progress_step=0,
            steps_per_epoch=progress.steps_per_epoch,
            heartbeat_at=utcnow(),
        )


def heartbeat(session_factory: sessionmaker[Session], claim: Claim, progress: Progress) -> bool:
    """Renew the lease and store where training is; False once the lease is lost."""
    with transaction(session_factory) as session:
        return _fenced_update(
            session,
            claim,
            heartbeat_at=utcnow(),
            progress_epoch=progress.epoch,
            progress_step=progress.step,
        )


def record_epoch(session_factory: sessionmaker[Session], claim: Claim, result: EpochResult) -> bool:
    """Commit one finished epoch as its own row; False, writing nothing, once the lease is lost."""
    with transaction(session_factory) as session:
        if not _fenced_update(session, claim, heartbeat_at=utcnow()):
            return False
        session.add(
            EpochMetric(
                experiment_id=claim.experiment_id,
                epoch=result.epoch,
                loss=result.loss,
                accuracy=result.accuracy,
                val_loss=result.val_loss,
                val_accuracy=result.val_accuracy,
                seconds=result.seconds,
                ms_per_step=result.ms_per_step,
            )
        )
        return True


def complete(session_factory: sessionmaker[Session], claim: Claim, result: TrainingResult) -> bool:
    """Store the test metrics and the model and mark the experiment `succeeded`, atomically."""
    with transaction(session_factory) as session:
        if not _fenced_update(
            session,
            claim,
            status=ExperimentStatus.SUCCEEDED,
            finished_at=utcnow(),
            test_loss=result.test_loss,
            test_accuracy=result.test_accuracy,
            stopped_early=result.stopped_early,
            stop_reason=result.stop_reason,
            claim_token=None,
        ):
            return False
        session.add(
            TrainedModel(
                experiment_id=claim.experiment_id,
                keras_file=result.keras_file,
                size_bytes=len(result.keras_file),
                sha256=hashlib.sha256(result.keras_file).hexdigest(),
                created_at=utcnow(),
            )
        )
        return True


def fail(session_factory: sessionmaker[Session], claim: Claim, *, error: str) -> bool:
    """Mark the experiment `failed` with a readable reason."""
    with transaction(session_factory) as session:
        return _fenced_update(
            session,
            claim,
            status=ExperimentStatus.FAILED,
            finished_at=utcnow(),
            error=error,
            claim_token=None,
        )


def _requeue_values() -> dict[str, Any]:
    return {
        "status": ExperimentStatus.QUEUED,
        "claim_token": None,
        "worker_id": None,
        "started_at": None,
        "heartbeat_at": None,
        "progress_epoch": None,
        "progress_step": None,
    }


def release(session_factory: sessionmaker[Session], claim: Claim) -> bool:
    """Put an interrupted experiment back in the queue; it restarts from its first epoch."""
    with transaction(session_factory) as session:
        if not _fenced_update(session, claim, **_requeue_values()):
            return False
        session.execute(delete(EpochMetric).where(EpochMetric.experiment_id == claim.experiment_id))
        return True


def recover_expired_leases(
    session_factory: sessionmaker[Session], *, lease_seconds: float
) -> list[int]:
    """Requeue running experiments whose worker stopped sending heartbeats; return their ids."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    with transaction(session_factory) as session:
        expired = list(
            session.scalars(
                update(Experiment)
                .where(
                    Experiment.status == ExperimentStatus.RUNNING, Experiment.heartbeat_at < cutoff
                )
                .values(**_requeue_values())
                .returning(Experiment.id)
                .execution_options(synchronize_session=False)
            )
        )
        if expired:
            session.execute(delete(EpochMetric).where(EpochMetric.experiment_id.in_(expired)))
    return expired
