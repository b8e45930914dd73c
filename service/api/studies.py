"""Routes for studies: a whole comparison submitted in one request, and read back as evidence."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.api.deps import DatabaseDep, SettingsDep
from service.api.errors import error_responses
from service.api.experiments import MAX_PAGE_SIZE
from service.api.security import CallerDep, authenticate
from service.models import Study
from service.schemas import MAX_DATABASE_ID
from service.settings import Settings
from service.studies.curves import learning_curves_png
from service.studies.export import runs_csv
from service.studies.report import StudyPage, StudyRead, study_list_item, study_read
from service.studies.request import Cell, CellError, StudyCreate, expand
from service.studies.store import (
    cancel_study,
    create_study,
    status_counts,
    status_counts_of,
    study_for_key,
    study_runs,
)

router = APIRouter(
    prefix="/studies",
    tags=["studies"],
    dependencies=[Depends(authenticate)],
    responses=error_responses(401, 403, 503),
)

StudyId = Annotated[int, Path(ge=1, le=MAX_DATABASE_ID)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="a retried POST with the same key returns the first one's study",
    ),
]


def get_study_or_404(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id, populate_existing=True)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_id} does not exist")
    return study


def checked_cells(payload: StudyCreate, settings: Settings) -> list[Cell]:
    """Every cell's spec, or a 422 that names the first bad cell and what is wrong with it."""
    try:
        cells = expand(payload)
    except CellError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    if len(cells) > settings.max_queued:
        # A 429 would invite a retry that can never succeed.
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the study has {len(cells)} experiments, more than the {settings.max_queued} "
            "one API key may have queued at once (MAX_QUEUED): split it into smaller studies",
        )
    for cell in cells:
        steps = cell.spec.training_steps()
        if steps > settings.max_training_steps:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                str(
                    CellError(
                        cell.params,
                        cell.device,
                        f"{steps:,} training steps, over the limit of "
                        f"{settings.max_training_steps:,} (MAX_TRAINING_STEPS)",
                    )
                ),
            )
    return cells


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StudyRead,
    responses={
        200: {"description": "an earlier POST with this Idempotency-Key made the study"},
        **error_responses(400, 409, 413, 422, 429),
    },
)
async def create_study_route(
    payload: StudyCreate,
    caller: CallerDep,
    database: DatabaseDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> StudyRead:
    """Validate every cell, then queue them all in one transaction: all or nothing."""
    cells = await run_in_threadpool(checked_cells, payload, settings)

    def create(session: Session) -> tuple[int, bool]:
        if idempotency_key is not None:
            earlier = study_for_key(session, caller.owner, idempotency_key)
            if earlier is not None:
                return _same_request(earlier, payload, idempotency_key), False
        study = create_study(
            session,
            payload,
            cells,
            owner=caller.owner,
            idempotency_key=idempotency_key,
            max_queued=settings.max_queued,
        )
        return study.id, True

    try:
        study_id, created = await database.write(create)
    except IntegrityError:
        # Two POSTs with one key raced; the other one's transaction made the study.
        study_id, created = await database.write(create)
    response.headers["Location"] = f"/studies/{study_id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return await database.read(lambda session: read_study(session, study_id))


def _same_request(study: Study, payload: StudyCreate, key: str) -> int:
    if study.request != payload.model_dump(mode="json"):  # As create_study stored it.
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key {key[:100]!r} already made study {study.id} from a different "
            "body: use a new key for a new study",
        )
    return study.id


def read_study(session: Session, study_id: int) -> StudyRead:
    study = get_study_or_404(session, study_id)
    return study_read(study, status_counts(session, study_id), study_runs(session, study_id))


@router.get("", response_model=StudyPage, responses=error_responses(422))
async def list_studies(
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_DATABASE_ID)] = 0,
) -> StudyPage:
    """Studies, newest first, with their progress."""

    def page(session: Session) -> StudyPage:
        total = session.scalar(select(func.count()).select_from(Study)) or 0
        studies = session.scalars(
            select(Study).order_by(Study.id.desc()).limit(limit).offset(offset)
        ).all()
        counts = status_counts_of(session, [study.id for study in studies])
        items = [study_list_item(study, counts[study.id]) for study in studies]
        return StudyPage(items=items, total=total, limit=limit, offset=offset)

    return await database.read(page)


@router.get(
    "/{study_id}",
    response_model=StudyRead,
    responses={
        200: {"content": {"text/csv": {}}, "description": "?format=csv: one row per experiment"},
        **error_responses(404, 422),
    },
)
async def get_study(
    study_id: StudyId,
    database: DatabaseDep,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> StudyRead | Response:
    """Progress, then the comparison: per-variant statistics, Pareto fronts, effects, speedup."""
    if output == "csv":

        def table(session: Session) -> str:
            study = get_study_or_404(session, study_id)
            return runs_csv(study.id, study.varied, study_runs(session, study_id))

        return Response(
            await database.read(table),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="study-{study_id}.csv"'},
        )
    return await database.read(lambda session: read_study(session, study_id))


@router.post(
    "/{study_id}/cancel",
    response_model=StudyRead,
    responses=error_responses(404, 409, 422),
)
async def cancel_study_route(study_id: StudyId, database: DatabaseDep) -> StudyRead:
    """Cancel every queued experiment of the study now, and stop every running one."""

    def cancel(session: Session) -> None:
        study = get_study_or_404(session, study_id)
        counts = status_counts(session, study_id)
        if counts["queued"] + counts["running"] == 0:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"study {study_id} has no queued or running experiments to cancel",
            )
        cancel_study(session, study)

    await database.write(cancel)
    return await database.read(lambda session: read_study(session, study_id))


@router.get(
    "/{study_id}/learning-curves.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 422)},
)
async def study_learning_curves(study_id: StudyId, database: DatabaseDep) -> Response:
    """Every variant's mean training loss and accuracy per epoch on shared axes."""

    def runs(session: Session) -> tuple[str, list]:
        study = get_study_or_404(session, study_id)
        return study.name, study_runs(session, study_id)

    name, found = await database.read(runs)
    png = await run_in_threadpool(learning_curves_png, f"study {study_id}: {name}", found)
    return Response(png, media_type="image/png")
