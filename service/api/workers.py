"""GET /workers: the registered workers and what each is running."""

from fastapi import APIRouter
from sqlalchemy import select

from service.api.deps import ReadSessionDep, SettingsDep
from service.models import Worker
from service.queue import alive_workers
from service.schemas import WorkerRead

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=list[WorkerRead])
def list_workers(session: ReadSessionDep, settings: SettingsDep) -> list[WorkerRead]:
    """Every registered worker, alive ones first, newest first."""
    alive = alive_workers(session, lease_seconds=settings.lease_seconds).label("alive")
    rows = session.execute(
        select(Worker, alive).order_by(alive.desc(), Worker.started_at.desc())
    ).all()
    return [
        WorkerRead.model_validate({**_columns(worker), "alive": bool(is_alive)})
        for worker, is_alive in rows
    ]


def _columns(worker: Worker) -> dict:
    return {column.key: getattr(worker, column.key) for column in Worker.__table__.columns}
