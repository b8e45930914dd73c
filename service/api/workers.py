"""GET /workers: the registered workers and what each is running."""

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import DatabaseDep, SettingsDep
from service.api.errors import error_responses
from service.api.security import authenticate
from service.models import Worker
from service.registry import alive_condition
from service.schemas import WorkerRead

router = APIRouter(
    prefix="/workers",
    tags=["workers"],
    dependencies=[Depends(authenticate)],
    responses=error_responses(401, 503),
)


@router.get("", response_model=list[WorkerRead])
async def list_workers(database: DatabaseDep, settings: SettingsDep) -> list[WorkerRead]:
    """Every registered worker, alive ones first, newest first."""

    return await database.read(lambda session: worker_rows(session, settings.lease_seconds))


def worker_rows(session: Session, lease_seconds: float) -> list[WorkerRead]:
    """Every registered worker, alive ones first, newest first."""
    alive = alive_condition(session, lease_seconds=lease_seconds).label("alive")
    found = session.execute(
        select(Worker, alive).order_by(alive.desc(), Worker.started_at.desc())
    ).all()
    return [
        WorkerRead.model_validate({**_columns(worker), "alive": bool(is_alive)})
        for worker, is_alive in found
    ]


def _columns(worker: Worker) -> dict:
    return {column.key: getattr(worker, column.key) for column in Worker.__table__.columns}
