"""POST /predict: classify uploaded images with a trained experiment's model."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.database import Database
from service.api.deps import ModelCacheDep, SettingsDep
from service.api.errors import error_responses
from service.api.experiments import get_experiment_or_404
from service.api.security import authenticate
from service.api.uploads import (
    MalformedMultipartError,
    multipart_field,
    payload_too_large,
    read_body,
)
from service.architecture import IMAGE_SIZE
from service.models import Experiment, ExperimentStatus, TrainedModel
from service.schemas import MAX_DATABASE_ID, PredictResponse
from service.serving.batching import MicroBatcher
from service.serving.images import (
    ImageTooLargeError,
    InvalidImageError,
    base64_bytes,
    open_image,
    padded_pixels,
    parse_array,
    to_model_input,
)
from service.serving.inference import ModelCache, describe
from service.settings import Settings

router = APIRouter(tags=["predict"], dependencies=[Depends(authenticate)])

# Work small enough to cost less than a thread hop runs on the event loop, the rest in a
# thread. Reading a header costs time in proportion to the file, not to its pixels (5 MB of
# empty PNG chunks took 1.6 s), so only files this small are opened inline; a 28×28 PNG
# takes under 1 kB.
INLINE_OPEN_BYTES = 4096
# Decoding costs time in proportion to the pixels the header announces, counted on the padded
# square (784 for a 28×28 instance): a 177-byte PNG can hold 50,000 rows.
INLINE_DECODE_PIXELS = 4096

MEDIA_TYPES = (
    "multipart/form-data (field 'image'), application/json ({'instances': [...]}) or image/*"
)

# FastAPI documents no body for a route that reads the request itself; this is what it reads,
# so that the interactive documentation can send it.
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "instances": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {
                                    "type": "array",
                                    "description": "28×28 (or 28×28×1): 0–255 integers or "
                                    "0–1 floats",
                                    "items": {"type": "array"},
                                },
                                {
                                    "type": "object",
                                    "properties": {
                                        "b64": {"type": "string", "contentEncoding": "base64"}
                                    },
                                    "required": ["b64"],
                                    "additionalProperties": False,
                                },
                            ]
                        },
                    }
                },
                "required": ["instances"],
            },
            "example": {"instances": [[[0] * IMAGE_SIZE] * IMAGE_SIZE]},
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}

# An instance as `_open` leaves it for decoding: an image whose header is read, or an array.
Instance = Image.Image | list


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type, refused with a 415 unless /predict reads it."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in ("multipart/form-data", "application/json") and not (
        media_type.startswith("image/")
    ):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"content type {media_type or 'missing'!r} is not supported: send {MEDIA_TYPES}",
        )
    return media_type


def _uploads(content_type: str, media_type: str, body: bytes, settings: Settings) -> list:
    """The body's items: image bytes, or the JSON instances (arrays and {"b64": ...})."""
    if media_type == "multipart/form-data":
        try:
            image = multipart_field(body, content_type, "image")
        except MalformedMultipartError as error:
            raise _unprocessable(f"malformed multipart body: {error}") from None
        if image is None:
            raise _unprocessable("send the picture as a multipart file field named 'image'")
        return [image]
    if media_type == "application/json":
        return _instances(body, settings)
    return [body]


def _instances(body: bytes, settings: Settings) -> list:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _unprocessable(f"the body is not valid JSON ({error})") from None
    except ValueError:
        # How Python refuses an integer of over 4,300 digits; its message would advise
        # changing an interpreter setting.
        raise _unprocessable("the body's JSON holds a number with too many digits") from None
    except RecursionError:
        raise _unprocessable("the body's JSON is nested too deeply") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise _unprocessable('send {"instances": [...]} with 28×28 arrays or {"b64": ...} items')
    if len(instances) > settings.max_predict_instances:
        raise payload_too_large(
            f"{len(instances)} instances, over the limit of {settings.max_predict_instances}"
        )
    return instances


@contextmanager
def _instance_errors(index: int) -> Iterator[None]:
    """Name the instance a decoding error is about, as a 413 or a 422."""
    try:
        yield
    except ImageTooLargeError as error:
        raise payload_too_large(f"instance {index}: {error}") from None
    except InvalidImageError as error:
        raise _unprocessable(f"instance {index}: {error}") from None


def _open(index: int, upload: object, settings: Settings) -> Instance:
    """An instance with its image's header read and checked against the budget, not decoded."""
    with _instance_errors(index):
        if isinstance(upload, dict):
            if set(upload) != {"b64"} or not isinstance(upload["b64"], str):
                raise InvalidImageError('an object instance must be {"b64": "<base64 image>"}')
            upload = base64_bytes(upload["b64"])
        if isinstance(upload, bytes):
            return open_image(
                upload, max_pixels=settings.max_image_pixels, max_side=settings.max_image_side
            )
        if not isinstance(upload, list):
            raise InvalidImageError('an instance must be a 28×28 array or {"b64": ...}')
        return upload


def _pixels(instance: Instance) -> int:
    return padded_pixels(instance) if isinstance(instance, Image.Image) else IMAGE_SIZE**2


def _to_batch(instances: list[Instance], invert: bool | None) -> np.ndarray:
    """The instances decoded into one N×28×28 batch scaled to [0, 1]."""
    pixels = []
    for index, instance in enumerate(instances):
        with _instance_errors(index):
            if isinstance(instance, Image.Image):
                pixels.append(to_model_input(instance, invert=invert))
            else:
                pixels.append(parse_array(instance))
    return np.stack(pixels)


async def _read_images(
    content_type: str, media_type: str, body: bytes, settings: Settings, invert: bool | None
) -> np.ndarray:
    """The request's images as one batch: small ones decoded inline, the rest in a thread."""
    if len(body) > INLINE_OPEN_BYTES:
        # Parsing a large body is work too (5 MB of JSON, or of tiny multipart parts).
        return await run_in_threadpool(
            _decode_all, content_type, media_type, body, settings, invert
        )
    instances = _open_all(_uploads(content_type, media_type, body, settings), settings)
    if sum(map(_pixels, instances)) <= INLINE_DECODE_PIXELS:
        return _to_batch(instances, invert)
    return await run_in_threadpool(_to_batch, instances, invert)


def _open_all(uploads: list, settings: Settings) -> list[Instance]:
    """The uploads with their headers read, refused together past the request's budget."""
    instances = [_open(index, upload, settings) for index, upload in enumerate(uploads)]
    # Each image is checked against MAX_IMAGE_PIXELS alone; so is the whole request, or 256
    # tiny files that each announce 4096×4096 would cost seconds of decoding.
    total = sum(map(_pixels, instances))
    if total > settings.max_image_pixels:
        raise payload_too_large(
            f"the images add up to {total:,} pixels (as padded squares), over the "
            f"{settings.max_image_pixels:,} one request may decode: send fewer or smaller ones"
        )
    return instances


def _decode_all(
    content_type: str, media_type: str, body: bytes, settings: Settings, invert: bool | None
) -> np.ndarray:
    uploads = _uploads(content_type, media_type, body, settings)
    return _to_batch(_open_all(uploads, settings), invert)


class ModelResolver:
    """Which experiment's model serves a request, remembered for `ttl` seconds.

    Saves a database round trip per prediction; a model that changes is picked up within `ttl`.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._answers: dict[int | None, tuple[int, str, float]] = {}

    def cached(self, experiment_id: int | None) -> tuple[int, str] | None:
        answer = self._answers.get(experiment_id)
        if answer is not None and time.monotonic() - answer[2] < self.ttl:
            return answer[0], answer[1]
        return None

    async def resolve(self, database: Database, experiment_id: int | None) -> tuple[int, str]:
        now = time.monotonic()
        chosen_id, sha256 = await database.read(
            lambda session: _choose_experiment(session, experiment_id)
        )
        self._answers[experiment_id] = (chosen_id, sha256, now)
        return chosen_id, sha256


def _choose_experiment(session: Session, experiment_id: int | None) -> tuple[int, str]:
    """The experiment whose model serves this request, and its model's checksum."""
    if experiment_id is None:
        row = session.execute(
            select(Experiment.id, TrainedModel.sha256)
            .join(TrainedModel, TrainedModel.experiment_id == Experiment.id)
            .where(Experiment.status == ExperimentStatus.SUCCEEDED)
            .order_by(Experiment.finished_at.desc(), Experiment.id.desc())
            .limit(1)
        ).first()
        if row is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "no experiment has finished training yet: POST /experiments and wait for it",
            )
        return row.id, row.sha256
    experiment = get_experiment_or_404(session, experiment_id)
    sha256 = session.scalar(
        select(TrainedModel.sha256).where(TrainedModel.experiment_id == experiment_id)
    )
    if experiment.status != ExperimentStatus.SUCCEEDED or sha256 is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} is {experiment.status}, not succeeded: "
            "its model can serve once training has finished",
        )
    return experiment_id, sha256


async def _serving_model(
    request: Request, settings: Settings, cache: ModelCache, experiment_id: int | None
) -> tuple[int, MicroBatcher]:
    """The experiment that serves this request, and its loaded model's batcher."""
    state = request.app.state
    resolver: ModelResolver = state.model_resolver
    database: Database = state.database
    chosen = resolver.cached(experiment_id) or await resolver.resolve(database, experiment_id)
    chosen_id, sha256 = chosen

    def fetch() -> bytes:
        with database.read_session_factory() as fetch_session:
            return fetch_session.scalar(
                select(TrainedModel.keras_file).where(TrainedModel.experiment_id == chosen_id)
            )

    if cache.holds(chosen_id, sha256):
        loaded = cache.get(chosen_id, sha256, fetch)
    else:
        loaded = await run_in_threadpool(cache.get, chosen_id, sha256, fetch)
    if loaded.batcher is None:
        loaded.batcher = MicroBatcher(
            loaded,
            max_wait=settings.batch_wait_seconds,
            max_batch=settings.batch_max_images,
            executor=state.inference_executor,
        )
    return chosen_id, loaded.batcher


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 503),
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def predict(
    request: Request,
    settings: SettingsDep,
    cache: ModelCacheDep,
    experiment_id: Annotated[
        int | None, Query(ge=1, le=MAX_DATABASE_ID, description="default: latest succeeded")
    ] = None,
    invert: Annotated[
        bool | None, Query(description="default: invert dark-on-light pictures")
    ] = None,
) -> JSONResponse:
    """Classify one uploaded image, or a JSON batch of arrays and base64 images."""
    started = time.perf_counter()
    # What the request is comes first: a wrong one costs no database look-up.
    content_type = request.headers.get("content-type", "")
    media_type = _media_type(content_type)
    body = await read_body(request)
    if not body:
        raise _unprocessable(f"the body is empty: send {MEDIA_TYPES}")
    chosen_id, batcher = await _serving_model(request, settings, cache, experiment_id)
    async with batcher.arriving() as ticket:
        pixels = await _read_images(content_type, media_type, body, settings, invert)
        decoded = time.perf_counter()
        answer = await batcher.predict(pixels, ticket)
    finished = time.perf_counter()
    response = {
        "experiment_id": chosen_id,
        "model_selection": "requested" if experiment_id is not None else "latest_succeeded",
        "predictions": describe(answer.probabilities),
    }
    # Built by hand, not validated again: FastAPI's response_model pass would double the work.
    return JSONResponse(
        response,
        headers={
            "Server-Timing": f"read;dur={(decoded - started) * 1000:.2f}, "
            f'model;dur={(finished - decoded) * 1000:.2f};desc="batch of {answer.batch_images}"'
        },
    )
