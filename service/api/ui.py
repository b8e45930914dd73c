"""The dashboard: server-rendered pages at / and /ui/..., behind the same keys as the API.

Each page renders its tables on the server, so they work with JavaScript off. With keys set,
a page requested without one is a shell that asks for the key; its script keeps the key in
session storage and fetches the page's content (`X-Fragment: 1`) with it. Scripts also follow
the event streams and redraw the live parts. Nothing comes from another host.
"""

import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates
from pydantic import BeforeValidator, ValidationError

from service import spec
from service.api.deps import DatabaseDep, SettingsDep
from service.api.experiments import get_experiment_or_404
from service.api.security import authenticate, bearer
from service.api.studies import get_study_or_404
from service.architecture import IMAGE_SIZE
from service.datasets import CLASS_NAMES, DatasetNotFoundError, load_test_images
from service.schemas import MAX_DATABASE_ID
from service.settings import Settings
from service.spec import ExperimentCreate
from service.ui import pages
from service.ui.charts import heat

logger = logging.getLogger(__name__)
UI = Path(__file__).resolve().parent.parent / "ui"
templates = Jinja2Templates(directory=UI / "templates")
templates.env.globals["heat"] = heat
templates.env.filters["variant_words"] = pages.variant_words
router = APIRouter(include_in_schema=False)
Id = Annotated[int, Query(ge=1, le=MAX_DATABASE_ID)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
# Scripts and fetches from this server only, no framing (a framed page's Cancel is one click
# away), and the key never leaves in a Referer. Inline styles: the heat map's cells.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


async def _allowed(request: Request, settings: Settings, credentials: Credentials) -> bool:
    try:
        await authenticate(request, settings, credentials)
    except HTTPException:
        return False
    return True


async def _page(
    request: Request,
    settings: Settings,
    credentials: Credentials,
    template: str,
    context: dict,
    load,
) -> HTMLResponse:
    """The page: its content alone for a script's fetch, in the full shell otherwise, and the
    key prompt in place of the content when the request may not read it."""
    fragment = request.headers.get("x-fragment") == "1"
    if not await _allowed(request, settings, credentials):
        if fragment:
            raise HTTPException(
                401, "the API key is missing or not valid", {"WWW-Authenticate": "Bearer"}
            )
        return _render(request, "base.html", {**context, "content": None})
    context = {**context, **await load()}
    if fragment:
        return _render(request, template, context)
    return _render(request, "base.html", {**context, "content": template})


def _render(request: Request, template: str, context: dict, status_code: int = 200):
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    # A page rendered for a key holds what the key may read: no cache keeps it.
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/experiments", status_code=307)


def _blank_is_none(value: object) -> object:
    """A filter form sends its empty fields (`status=&study_id=`): they filter nothing."""
    return None if value == "" else value


@router.get("/ui/experiments")
async def experiments_page(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    credentials: Credentials,
    sort: Literal[tuple(pages.SORT_KEYS)] = "created",  # type: ignore[valid-type]
    order: Literal["asc", "desc"] = "desc",
    status: Annotated[
        Literal[tuple(pages.STATUSES)] | None,  # type: ignore[valid-type]
        BeforeValidator(_blank_is_none),
    ] = None,
    study_id: Annotated[Id | None, BeforeValidator(_blank_is_none)] = None,
    page: Annotated[int, Query(ge=1, le=MAX_DATABASE_ID)] = 1,
) -> HTMLResponse:
    async def load() -> dict:
        listing = await database.read(
            lambda session: pages.experiment_list(
                session, sort=sort, order=order, status=status, study_id=study_id, page=page
            )
        )
        return {"listing": listing, "statuses": pages.STATUSES}

    context = {
        "title": "Experiments",
        "fields": FORM_FIELDS,
        "max_dense_units": spec.MAX_DENSE_UNITS,
        "default_dense_units": ",".join(map(str, spec.DEFAULT_DENSE_UNITS)),
    }
    return await _page(request, settings, credentials, "experiments.html", context, load)


@dataclass(frozen=True)
class Field:
    """A number field of the submit form, with the bounds the API enforces."""

    name: str
    label: str
    minimum: float
    maximum: float
    default: float | None
    step: float = 1
    above_minimum: bool = False  # The minimum itself is refused (a learning rate of 0).

    @property
    def bounds(self) -> str:
        if self.above_minimum:
            return f"> {_number(self.minimum)}, ≤ {_number(self.maximum)}"
        return f"{_number(self.minimum)}–{_number(self.maximum)}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


# The submit form's number fields, with the bounds the spec enforces; built once.
FORM_FIELDS = (
    Field("conv_layers", "conv layers", 0, spec.MAX_CONV_LAYERS, spec.DEFAULT_CONV_LAYERS),
    Field("filters", "filters per conv layer", 1, spec.MAX_FILTERS, spec.DEFAULT_FILTERS),
    Field("kernel_size", "kernel size", 1, IMAGE_SIZE, spec.DEFAULT_KERNEL_SIZE),
    Field("pool_size", "pool size (0: none)", 0, IMAGE_SIZE, spec.DEFAULT_POOL_SIZE),
    Field("epochs", "epochs", 1, spec.MAX_EPOCHS, spec.DEFAULT_EPOCHS),
    Field("batch_size", "batch size", 1, spec.MAX_BATCH_SIZE, spec.DEFAULT_BATCH_SIZE),
    Field("train_samples", "training images (empty: all)", 1, spec.TRAIN_IMAGES, None),
    Field("learning_rate", "learning rate", 0, 1, spec.DEFAULT_LEARNING_RATE, 0.0001, True),
    Field("validation_split", "validation split", 0, 0.5, 0, 0.05),
    Field("seed", "seed (empty: drawn)", 0, spec.MAX_SEED, None),
)


@router.get("/ui/experiments/{experiment_id}")
async def experiment_page(
    request: Request,
    experiment_id: int,
    database: DatabaseDep,
    settings: SettingsDep,
    credentials: Credentials,
    part: Literal["all", "live"] = "all",
) -> HTMLResponse:
    if not 1 <= experiment_id <= MAX_DATABASE_ID:
        raise HTTPException(404, f"experiment {experiment_id} does not exist")

    async def load() -> dict:
        def read(session):
            experiment = get_experiment_or_404(session, experiment_id)
            page = pages.experiment_page(session, experiment, settings.lease_seconds)
            return page, experiment.test_misclassified or []

        view, wrong = await database.read(read)
        if wrong:
            images = await _test_images(settings)
            if images is not None:
                view = replace(view, misclassified=pages.misclassified(wrong, images))
        return {"view": view, "class_names": CLASS_NAMES}

    template = "experiment_live.html" if part == "live" else "experiment.html"
    context = {"title": f"Experiment {experiment_id}"}
    return await _page(request, settings, credentials, template, context, load)


async def _test_images(settings: Settings) -> np.ndarray | None:
    return await run_in_threadpool(_read_test_images, settings.fashion_mnist_dir)


@functools.cache
def _read_test_images(directory: Path | None) -> np.ndarray | None:
    """The test set, read once per process; None, remembered too, where this process has no
    copy of it (an API host without the data set shows everything but the pictures)."""
    try:
        return load_test_images(directory)
    except (DatasetNotFoundError, OSError) as error:
        logger.warning("no test images to show: %s", error)
        return None


@router.get("/ui/studies/{study_id}")
async def study_page(
    request: Request,
    study_id: int,
    database: DatabaseDep,
    settings: SettingsDep,
    credentials: Credentials,
) -> HTMLResponse:
    if not 1 <= study_id <= MAX_DATABASE_ID:
        raise HTTPException(404, f"study {study_id} does not exist")

    async def load() -> dict:
        def read(session):
            get_study_or_404(session, study_id)
            return pages.study_page(session, study_id)

        return {"view": await database.read(read)}

    context = {"title": f"Study {study_id}"}
    return await _page(request, settings, credentials, "study.html", context, load)


@router.get("/ui/workers")
async def workers_page(
    request: Request, database: DatabaseDep, settings: SettingsDep, credentials: Credentials
) -> HTMLResponse:
    async def load() -> dict:
        rows = await database.read(
            lambda session: pages.workers_page(session, settings.lease_seconds)
        )
        return {"workers": rows}

    return await _page(request, settings, credentials, "workers.html", {"title": "Workers"}, load)


@router.post("/ui/preview")
async def preview(request: Request) -> HTMLResponse:
    """The layer summary of a spec (the form's JSON), or the 422's messages. Open without a key
    on purpose: it reads and stores nothing, and cross-site POSTs are refused as everywhere."""
    try:
        summary = ExperimentCreate.model_validate_json(await request.body()).to_spec().summary()
    except ValidationError as error:
        messages = [
            {"loc": [str(part) for part in e["loc"]], "msg": e["msg"].removeprefix("Value error, ")}
            for e in error.errors()
        ]
        return _render(request, "preview.html", {"errors": messages}, status_code=422)
    return _render(request, "preview.html", {"summary": summary})


@router.get("/ui/static/{name}")
async def static(name: Literal["app.js", "style.css"]) -> Response:
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return Response(
        (UI / "static" / name).read_bytes(),
        media_type=media,
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )
