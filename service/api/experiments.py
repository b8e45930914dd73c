"""Routes for submitting, listing and inspecting experiments."""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from service import queue
from service.api.database import Database, DatabaseBusyError
from service.api.deps import DatabaseDep, SettingsDep
from service.api.errors import error_responses
from service.api.long_poll import MAX_WAIT_SECONDS, wait_for_change
from service.api.presenters import (
    QueueState,
    experiment_list_item,
    experiment_read,
    misclassified_read,
    new_experiment_read,
    queue_state,
)
from service.api.security import CallerDep, authenticate
from service.datasets import load_test_images
from service.models import Experiment, ExperimentStatus, TrainedModel
from service.plots import confusion_matrix_png, learning_curve_png, misclassified_png
from service.results import MISCLASSIFIED_KEPT
from service.schemas import MAX_DATABASE_ID, ExperimentPage, ExperimentRead, MisclassifiedRead
from service.serving.resolver import ExperimentNotFoundError
from service.settings import Settings
from service.spec import ExperimentCreate

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/experiments",
    tags=["experiments"],
    dependencies=[Depends(authenticate)],
    responses=error_responses(401, 403, 503),
)

MAX_PAGE_SIZE = 100
WAIT_HELP = (
    "seconds to hold the answer until the status changes (a long poll for clients without "
    "the event stream), at most LONG_POLL_MAX_SECONDS; it returns at once for an experiment "
    "that has ended"
)
CHANGED_FROM_HELP = "with `wait`: the status you last saw (default: the status on arrival)"

ExperimentId = Annotated[int, Path(ge=1, le=MAX_DATABASE_ID)]
MisclassifiedLimit = Annotated[
    int, Query(ge=1, le=MISCLASSIFIED_KEPT, description="how many, in test-set order")
]


def get_experiment_or_404(session: Session, experiment_id: int) -> Experiment:
    """The experiment with this id, or a 404 that says so."""
    experiment = session.get(
        Experiment,
        experiment_id,
        options=[selectinload(Experiment.epochs), selectinload(Experiment.attempt_history)],
        populate_existing=True,
    )
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(ExperimentNotFoundError(experiment_id)))
    return experiment


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExperimentRead,
    responses=error_responses(400, 413, 422, 429),
)
async def create_experiment(
    payload: ExperimentCreate,
    caller: CallerDep,
    database: DatabaseDep,
    settings: SettingsDep,
    response: Response,
) -> ExperimentRead:
    """Validate a spec and queue it for training."""
    spec = payload.to_spec()
    steps = spec.training_steps()
    if steps > settings.max_training_steps:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the spec asks for {steps:,} training steps ({spec.epochs} epochs × "
            f"{steps // spec.epochs:,} steps per epoch), over the limit of "
            f"{settings.max_training_steps:,} (MAX_TRAINING_STEPS): lower epochs or "
            "train_samples, or raise batch_size",
        )

    def enqueue(session: Session) -> Experiment:
        return queue.enqueue(
            session,
            name=payload.name,
            spec=spec,
            owner=caller.owner,
            max_queued=settings.max_queued,
        )

    created = await database.write(enqueue)  # A full queue is a 429 (api/handlers.py).
    response.headers["Location"] = f"/experiments/{created.id}"
    state = await _queue_state_if_free(database, created, settings)
    return new_experiment_read(created, spec, state)


async def _queue_state_if_free(
    database: Database, experiment: Experiment, settings: Settings
) -> QueueState:
    """Its place in line, read after the commit; an experiment that is stored gets its 202
    even when that read cannot run: a 503 would make the client send it twice."""
    try:
        return await database.read(
            lambda session: queue_state(
                session,
                experiment.id,
                experiment.requested_device,
                lease_seconds=settings.lease_seconds,
            )
        )
    except (DatabaseBusyError, SQLAlchemyError) as error:
        logger.warning("experiment %d queued; its place in line unknown: %s", experiment.id, error)
        return QueueState()


@router.get("", response_model=ExperimentPage, responses=error_responses(422))
async def list_experiments(
    database: DatabaseDep,
    status_filter: Annotated[ExperimentStatus | None, Query(alias="status")] = None,
    study_id: Annotated[int | None, Query(ge=1, le=MAX_DATABASE_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_DATABASE_ID)] = 0,
) -> ExperimentPage:
    """Experiments, newest first, with the columns people compare; `study_id` keeps one
    study's."""
    conditions = [Experiment.status == status_filter] if status_filter else []
    if study_id is not None:
        conditions.append(Experiment.study_id == study_id)

    def page(session: Session) -> ExperimentPage:
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

    return await database.read(page)


@router.get("/{experiment_id}", response_model=ExperimentRead, responses=error_responses(404, 422))
async def get_experiment(
    experiment_id: ExperimentId,
    database: DatabaseDep,
    settings: SettingsDep,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description=WAIT_HELP)] = 0,
    changed_from: Annotated[ExperimentStatus | None, Query(description=CHANGED_FROM_HELP)] = None,
) -> ExperimentRead:
    """One experiment: status, progress, every finished epoch, attempts, test result; with
    `wait`, once its status changes (a long poll)."""
    seconds = min(wait, settings.long_poll_max_seconds)
    if seconds > 0:
        await wait_for_change(
            request, database, experiment_id, changed_from=changed_from, seconds=seconds
        )
    return await database.read(
        lambda session: experiment_read(
            session,
            get_experiment_or_404(session, experiment_id),
            lease_seconds=settings.lease_seconds,
        )
    )


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses={
        202: {"description": "running: the worker stops it within seconds"},
        **error_responses(404, 409, 422),
    },
)
async def cancel_experiment(
    experiment_id: ExperimentId, database: DatabaseDep, settings: SettingsDep, response: Response
) -> ExperimentRead:
    """Cancel a queued experiment at once (200) or stop a running one (202); 409 if finished."""

    def cancel(session: Session) -> ExperimentRead:
        experiment = get_experiment_or_404(session, experiment_id)
        if not queue.request_cancel(session, experiment_id):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"experiment {experiment_id} is {experiment.status}: only queued or running "
                "experiments can be cancelled",
            )
        experiment = get_experiment_or_404(session, experiment_id)
        return experiment_read(session, experiment, lease_seconds=settings.lease_seconds)

    cancelled = await database.write(cancel)
    if cancelled.status == ExperimentStatus.RUNNING:
        response.status_code = status.HTTP_202_ACCEPTED
    return cancelled


@router.get(
    "/{experiment_id}/learning-curve.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 422)},
)
async def get_learning_curve(experiment_id: ExperimentId, database: DatabaseDep) -> Response:
    """Loss and accuracy per epoch as a PNG; 409 before the first epoch has finished."""
    experiment = await database.read(lambda session: get_experiment_or_404(session, experiment_id))
    if not experiment.epochs:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} has no finished epoch yet (status {experiment.status})",
        )
    title = f"experiment {experiment.id}" + (f": {experiment.name}" if experiment.name else "")
    # Plotting takes tens of milliseconds: off the event loop, and holding no connection.
    png = await run_in_threadpool(learning_curve_png, title, experiment.epochs)
    return Response(png, media_type="image/png")


@router.get(
    "/{experiment_id}/confusion-matrix.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 422)},
)
async def get_confusion_matrix(experiment_id: ExperimentId, database: DatabaseDep) -> Response:
    """The test set's confusion matrix as a heat map; 409 until the experiment has succeeded."""
    experiment = await database.read(lambda session: get_experiment_or_404(session, experiment_id))
    if experiment.test_confusion is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} has no test evaluation (status {experiment.status})",
        )
    title = f"experiment {experiment.id}: test accuracy {experiment.test_accuracy:.4f}"
    png = await run_in_threadpool(confusion_matrix_png, title, experiment.test_confusion)
    return Response(png, media_type="image/png")


def _misclassified_or_409(experiment: Experiment) -> tuple[list[list[int]], list[list[int]]]:
    """The run's confusion matrix and first misclassified images, or a 409 until it has
    succeeded (or when it succeeded before they were recorded)."""
    if experiment.test_confusion is None or experiment.test_misclassified is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment.id} has no misclassified test images on record "
            f"(status {experiment.status})",
        )
    return experiment.test_confusion, experiment.test_misclassified


@router.get(
    "/{experiment_id}/misclassified",
    response_model=MisclassifiedRead,
    responses=error_responses(404, 409, 422),
)
async def get_misclassified(
    experiment_id: ExperimentId, database: DatabaseDep, limit: MisclassifiedLimit = 25
) -> MisclassifiedRead:
    """The first test images the model got wrong, with true and predicted class; 409 until
    the experiment has succeeded."""
    experiment = await database.read(lambda session: get_experiment_or_404(session, experiment_id))
    confusion, misclassified = _misclassified_or_409(experiment)
    return misclassified_read(experiment_id, confusion, misclassified, limit)


@router.get(
    "/{experiment_id}/misclassified.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 422)},
)
async def get_misclassified_png(
    experiment_id: ExperimentId,
    database: DatabaseDep,
    settings: SettingsDep,
    limit: MisclassifiedLimit = 25,
) -> Response:
    """The first test images the model got wrong, captioned "true → predicted", as a PNG;
    409 until the experiment has succeeded."""
    experiment = await database.read(lambda session: get_experiment_or_404(session, experiment_id))
    _, misclassified = _misclassified_or_409(experiment)
    title = f"experiment {experiment.id}: misclassified test images"

    def draw() -> bytes:
        # The first call reads the test images from disk; later ones find them cached.
        return misclassified_png(
            title, load_test_images(settings.fashion_mnist_dir), misclassified[:limit]
        )

    return Response(await run_in_threadpool(draw), media_type="image/png")


@router.get(
    "/{experiment_id}/model",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **error_responses(404, 409, 422),
    },
)
async def download_model(experiment_id: ExperimentId, database: DatabaseDep) -> Response:
    """The trained model as a `.keras` file; 409 until the experiment has succeeded."""

    def fetch(session: Session) -> bytes:
        experiment = get_experiment_or_404(session, experiment_id)
        keras_file = session.scalar(
            select(TrainedModel.keras_file).where(TrainedModel.experiment_id == experiment_id)
        )
        if keras_file is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"experiment {experiment_id} has no trained model (status {experiment.status})",
            )
        return keras_file

    return Response(
        await database.read(fetch),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}.keras"'},
    )
