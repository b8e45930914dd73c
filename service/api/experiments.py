"""Routes for submitting, listing and inspecting experiments."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service import queue
from service.api.deps import ReadSessionDep, SessionDep, SettingsDep
from service.api.views import experiment_list_item, experiment_read
from service.models import Experiment, ExperimentStatus, TrainedModel
from service.plots import learning_curve_png
from service.schemas import ExperimentCreate, ExperimentPage, ExperimentRead

router = APIRouter(prefix="/experiments", tags=["experiments"])

MAX_PAGE_SIZE = 100


def get_experiment_or_404(session: Session, experiment_id: int) -> Experiment:
    """The experiment with this id, or a 404 that says so."""
    experiment = session.get(
        Experiment,
        experiment_id,
        options=[selectinload(Experiment.epochs), selectinload(Experiment.attempt_history)],
        populate_existing=True,
    )
    if experiment is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"experiment {experiment_id} does not exist: GET /experiments lists them",
        )
    return experiment


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=ExperimentRead)
def create_experiment(
    payload: ExperimentCreate, session: SessionDep, settings: SettingsDep, response: Response
) -> ExperimentRead:
    """Validate a spec and queue it for training."""
    experiment = queue.enqueue(session, name=payload.name, spec=payload.to_spec())
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return experiment_read(
        session, get_experiment_or_404(session, experiment.id), lease_seconds=settings.lease_seconds
    )


@router.get("", response_model=ExperimentPage)
def list_experiments(
    session: ReadSessionDep,
    status_filter: Annotated[ExperimentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ExperimentPage:
    """Experiments, newest first, with the columns people compare."""
    conditions = [Experiment.status == status_filter] if status_filter else []
    total = session.scalar(select(func.count()).select_from(Experiment).where(*conditions))
    experiments = session.scalars(
        select(Experiment)
        .where(*conditions)
        .options(selectinload(Experiment.epochs))
        .order_by(Experiment.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return ExperimentPage(
        items=[experiment_list_item(e) for e in experiments],
        total=total or 0,
        limit=limit,
        offset=offset,
    )


@router.get("/{experiment_id}", response_model=ExperimentRead)
def get_experiment(
    experiment_id: int, session: ReadSessionDep, settings: SettingsDep
) -> ExperimentRead:
    """One experiment: status, progress, every finished epoch, attempts, test result."""
    return experiment_read(
        session, get_experiment_or_404(session, experiment_id), lease_seconds=settings.lease_seconds
    )


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses={202: {"description": "running: the worker stops it within seconds"}},
)
def cancel_experiment(
    experiment_id: int, session: SessionDep, settings: SettingsDep, response: Response
) -> ExperimentRead:
    """Cancel a queued experiment at once (200) or stop a running one (202); 409 if finished."""
    experiment = get_experiment_or_404(session, experiment_id)
    if not queue.request_cancel(session, experiment_id):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} is {experiment.status}: only queued or running "
            "experiments can be cancelled",
        )
    experiment = get_experiment_or_404(session, experiment_id)
    if experiment.status == ExperimentStatus.RUNNING:
        response.status_code = status.HTTP_202_ACCEPTED
    return experiment_read(session, experiment, lease_seconds=settings.lease_seconds)


@router.get(
    "/{experiment_id}/learning-curve.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_learning_curve(experiment_id: int, session: ReadSessionDep) -> Response:
    """Loss and accuracy per epoch as a PNG; 409 before the first epoch has finished."""
    experiment = get_experiment_or_404(session, experiment_id)
    if not experiment.epochs:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} has no finished epoch yet (status {experiment.status})",
        )
    title = f"experiment {experiment.id}" + (f": {experiment.name}" if experiment.name else "")
    return Response(learning_curve_png(title, experiment.epochs), media_type="image/png")


@router.get(
    "/{experiment_id}/model",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_model(experiment_id: int, session: ReadSessionDep) -> Response:
    """The trained model as a `.keras` file; 409 until the experiment has succeeded."""
    experiment = get_experiment_or_404(session, experiment_id)
    keras_file = session.scalar(
        select(TrainedModel.keras_file).where(TrainedModel.experiment_id == experiment_id)
    )
    if keras_file is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} has no trained model (status {experiment.status})",
        )
    return Response(
        keras_file,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}.keras"'},
    )
