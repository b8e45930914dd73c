"""The worker registry: which workers exist, whether each is alive, what each runs.

Kept apart from the queue: a worker registers once and heartbeats while idle; the queue's
claims and leases are about experiments.
"""

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from service.db import db_now, dialect_of, transaction
from service.models import Worker


class WorkerRefusedError(RuntimeError):
    """This worker may not join: SQLite is already used by a worker on another host."""


def register_worker(
    session_factory: sessionmaker[Session],
    *,
    worker_id: str,
    host: str,
    pid: int,
    device: str,
    lease_seconds: float,
) -> None:
    """Add this worker to the registry; on SQLite, refuse a second host."""
    with transaction(session_factory) as session:
        dialect = dialect_of(session)
        if dialect == "sqlite":
            other = session.execute(
                select(Worker.id, Worker.host).where(
                    Worker.host != host,
                    Worker.stopped_at.is_(None),
                    Worker.heartbeat_at > db_now(dialect, seconds=-lease_seconds),
                )
            ).first()
            if other:
                raise WorkerRefusedError(
                    f"worker {other.id} on host {other.host!r} already uses this SQLite "
                    "database, and SQLite serves one machine only: use PostgreSQL "
                    "(DATABASE_URL=postgresql+psycopg://...) for workers on several hosts"
                )
        session.execute(
            insert(Worker).values(
                id=worker_id,
                host=host,
                pid=pid,
                device=device,
                started_at=db_now(dialect),
                heartbeat_at=db_now(dialect),
            )
        )


def worker_heartbeat(
    session_factory: sessionmaker[Session], worker_id: str, *, experiment_id: int | None
) -> None:
    with transaction(session_factory) as session:
        session.execute(
            update(Worker)
            .where(Worker.id == worker_id)
            .values(heartbeat_at=db_now(dialect_of(session)), experiment_id=experiment_id)
        )


def unregister_worker(session_factory: sessionmaker[Session], worker_id: str) -> None:
    with transaction(session_factory) as session:
        session.execute(
            update(Worker)
            .where(Worker.id == worker_id)
            .values(stopped_at=db_now(dialect_of(session)), experiment_id=None)
        )


def alive_condition(session: Session, *, lease_seconds: float) -> ColumnElement[bool]:
    """The SQL condition that a worker has neither stopped nor missed its lease."""
    return (Worker.stopped_at.is_(None)) & (
        Worker.heartbeat_at > db_now(dialect_of(session), seconds=-lease_seconds)
    )
