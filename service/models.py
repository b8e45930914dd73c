"""ORM models: the experiment row is the job, its epochs and its trained model hang off it."""

import enum
import hashlib
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from service.results import EpochResult

# Stable constraint names keep Alembic's migrations identical on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that comes back timezone-aware in UTC, also from SQLite, which drops the zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ExperimentStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Stopped by its study's pruning rule: it fell behind the study's median.
    PRUNED = "pruned"


FINAL_STATUSES = (
    ExperimentStatus.SUCCEEDED,
    ExperimentStatus.FAILED,
    ExperimentStatus.CANCELLED,
    ExperimentStatus.PRUNED,
)


class Study(Base):
    """A comparison submitted in one request: its experiments are its cells."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(16))
    # The request as validated, so the study can be read and resubmitted as it was sent.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The spec fields that differ between cells, in the order the effects report them.
    varied: Mapped[list[str]] = mapped_column(JSON)
    prune: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # "<owner>/<Idempotency-Key>": a retried POST with the same key gets this study back
    # instead of a second one. One column, as NULL owners would never collide in a pair.
    idempotency_key: Mapped[str | None] = mapped_column(String(240), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    experiments: Mapped[list["Experiment"]] = relationship(
        back_populates="study", order_by="Experiment.id"
    )


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        Index("ix_experiments_status_device_id", "status", "requested_device", "id"),
        Index("ix_experiments_owner_status", "owner", "status"),
        # One experiment per cell: a variant on a device with a repeat number.
        UniqueConstraint("study_id", "variant", "requested_device", "repeat"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # Who submitted it: a prefix of the API key's SHA-256, never the key; null without keys.
    owner: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[ExperimentStatus] = mapped_column(
        Enum(
            ExperimentStatus,
            name="experiment_status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda statuses: [status.value for status in statuses],
        ),
        default=ExperimentStatus.QUEUED,
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    requested_device: Mapped[str] = mapped_column(String(8))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    claim_token: Mapped[str | None] = mapped_column(String(36))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(String(200))
    # The Keras backend that trained it: "tensorflow", "jax" or "torch".
    backend: Mapped[str | None] = mapped_column(String(32))
    # Versions, device, seed and data hashes: what it takes to train it again the same way.
    reproducibility: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), index=True
    )
    # The study cell's varied fields as canonical JSON, e.g. {"conv_layers":2,"filters":32}.
    variant: Mapped[str | None] = mapped_column(Text)
    repeat: Mapped[int | None] = mapped_column(Integer)

    progress_epoch: Mapped[int | None] = mapped_column(Integer)
    progress_step: Mapped[int | None] = mapped_column(Integer)
    steps_per_epoch: Mapped[int | None] = mapped_column(Integer)

    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    # Test images counted by true (row) and predicted (column) class.
    test_confusion: Mapped[list[list[int]] | None] = mapped_column(JSON)
    # The first misclassified test images as [index, true class, predicted class].
    test_misclassified: Mapped[list[list[int]] | None] = mapped_column(JSON)
    stopped_early: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    epochs: Mapped[list["EpochMetric"]] = relationship(
        back_populates="experiment", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )
    attempt_history: Mapped[list["Attempt"]] = relationship(
        order_by="Attempt.number", cascade="all, delete-orphan"
    )
    study: Mapped[Study | None] = relationship(back_populates="experiments")


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("experiment_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    ms_per_step: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    experiment: Mapped[Experiment] = relationship(back_populates="epochs")

    def result(self) -> EpochResult:
        """The row as the training child reported it (its columns are EpochResult's fields)."""
        return EpochResult(**{f.name: getattr(self, f.name) for f in fields(EpochResult)})


class AttemptOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"  # The worker shut down; the attempt is not spent.
    LOST = "lost"  # The lease expired: the worker was killed, stalled or lost.
    PRUNED = "pruned"  # Its study's median rule stopped it.


class Attempt(Base):
    """One claim of an experiment by a worker, and how it ended."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("experiment_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str] = mapped_column(String(200))
    claim_token: Mapped[str] = mapped_column(String(36), unique=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    """A registered worker process; alive while its heartbeat is younger than the lease."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(8))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL")
    )


class Checkpoint(Base):
    """The model and optimizer state after the last finished epoch, to resume from."""

    __tablename__ = "checkpoints"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer)
    keras_file: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TrainedModel(Base):
    """The saved `.keras` file, kept in the database so any API process or worker can serve it."""

    __tablename__ = "trained_models"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    keras_file: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @classmethod
    def of(cls, experiment_id: int, keras_file: bytes) -> "TrainedModel":
        """The row for a saved model, with the size and hash the API reports and caches by."""
        return cls(
            experiment_id=experiment_id,
            keras_file=keras_file,
            size_bytes=len(keras_file),
            sha256=hashlib.sha256(keras_file).hexdigest(),
        )


class Event(Base):
    """One committed change a client can follow: a status change or a finished epoch.

    Database triggers write these (migration 0007), in the transaction that made the change,
    so no code path that changes a status or records an epoch can forget one. Streams read
    them in (xid, id) order; see service/events.py for why the transaction id is part of it.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_experiment_id_xid_id", "experiment_id", "xid", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # PostgreSQL's id of the writing transaction; 0 on SQLite, whose writers commit in id order.
    xid: Mapped[int] = mapped_column(BigInteger)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
