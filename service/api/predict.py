"""POST /predict: classify uploaded images with a trained experiment's model."""

import json
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import ModelCacheDep, SettingsDep
from service.api.experiments import get_experiment_or_404
from service.api.uploads import (
    MalformedMultipartError,
    multipart_field,
    payload_too_large,
    read_body,
)
from service.architecture import IMAGE_SIZE
from service.batching import MicroBatcher
from service.inference import (
    ImageTooLargeError,
    InvalidImageError,
    decode_b64,
    decode_image,
    describe,
    parse_array,
)
from service.models import Experiment, ExperimentStatus, TrainedModel
from service.schemas import PredictResponse
from service.settings import Settings

router = APIRouter(tags=["predict"])

# A single 28×28 PNG is well under this; larger pictures are decoded off the event loop.
INLINE_DECODE_BYTES = 16 * 1024

MEDIA_TYPES = (
    "multipart/form-data (field 'image'), application/json ({'instances': [...]}) or image/*"
)


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


async def _read_images(request: Request, settings: Settings, invert: bool | None) -> np.ndarray:
    """The request's images as one N×28×28 batch scaled to [0, 1]."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in ("multipart/form-data", "application/json") and not (
        media_type.startswith("image/")
    ):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"content type {media_type or 'missing'!r} is not supported: send {MEDIA_TYPES}",
        )
    body = await read_body(request, settings.max_upload_bytes)
    if media_type == "multipart/form-data":
        try:
            image = multipart_field(body, content_type, "image")
        except MalformedMultipartError as error:
            raise _unprocessable(f"malformed multipart body: {error}") from None
        if image is None:
            raise _unprocessable("send the picture as a multipart file field named 'image'")
        return await _decode([image], settings, invert)
    if media_type == "application/json":
        return await _decode(_instances(body, settings), settings, invert)
    return await _decode([body], settings, invert)


def _instances(body: bytes, settings: Settings) -> list:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _unprocessable(f"the body is not valid JSON ({error})") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise _unprocessable('send {"instances": [...]} with 28×28 arrays or {"b64": ...} items')
    if len(instances) > settings.max_predict_instances:
        raise payload_too_large(
            f"{len(instances)} instances, over the limit of {settings.max_predict_instances}"
        )
    return instances


async def _decode(items: list, settings: Settings, invert: bool | None) -> np.ndarray:
    """Decode on the event loop when the input is small; a thread hop costs more than that."""
    if sum(map(_weight, items)) <= INLINE_DECODE_BYTES:
        return _decode_all(items, settings, invert)
    return await run_in_threadpool(_decode_all, items, settings, invert)


def _weight(item: object) -> int:
    if isinstance(item, bytes):
        return len(item)
    if isinstance(item, dict):
        return len(str(item.get("b64", "")))
    return IMAGE_SIZE * IMAGE_SIZE


def _decode_all(items: list, settings: Settings, invert: bool | None) -> np.ndarray:
    pixels = []
    for index, item in enumerate(items):
        try:
            if isinstance(item, bytes):
                pixels.append(
                    decode_image(item, max_pixels=settings.max_image_pixels, invert=invert)
                )
            elif isinstance(item, dict):
                if set(item) != {"b64"} or not isinstance(item["b64"], str):
                    raise InvalidImageError('an object instance must be {"b64": "<base64 image>"}')
                pixels.append(
                    decode_b64(item["b64"], max_pixels=settings.max_image_pixels, invert=invert)
                )
            else:
                pixels.append(parse_array(item))
        except ImageTooLargeError as error:
            raise payload_too_large(f"instance {index}: {error}") from None
        except InvalidImageError as error:
            raise _unprocessable(f"instance {index}: {error}") from None
    return np.stack(pixels)


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

    def resolve(self, session_factory, experiment_id: int | None) -> tuple[int, str]:
        now = time.monotonic()
        with session_factory() as session:
            chosen_id, sha256 = _choose_experiment(session, experiment_id)
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


@router.post("/predict", response_model=PredictResponse)
async def predict(
    request: Request,
    settings: SettingsDep,
    cache: ModelCacheDep,
    experiment_id: Annotated[int | None, Query(description="default: latest succeeded")] = None,
    invert: Annotated[
        bool | None, Query(description="default: invert dark-on-light pictures")
    ] = None,
) -> JSONResponse:
    """Classify one uploaded image, or a JSON batch of arrays and base64 images."""
    state = request.app.state
    started = time.perf_counter()
    resolver: ModelResolver = state.model_resolver
    chosen = resolver.cached(experiment_id) or await run_in_threadpool(
        resolver.resolve, state.read_session_factory, experiment_id
    )
    chosen_id, sha256 = chosen

    def fetch() -> bytes:
        with state.read_session_factory() as fetch_session:
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
            max_wait=settings.batch_wait_ms / 1000,
            max_batch=settings.batch_max_images,
            executor=state.inference_executor,
        )
    async with loaded.batcher.arriving() as ticket:
        pixels = await _read_images(request, settings, invert)
        decoded = time.perf_counter()
        answer = await loaded.batcher.predict(pixels, ticket)
    finished = time.perf_counter()
    body = {
        "experiment_id": chosen_id,
        "model_selection": "requested" if experiment_id is not None else "latest_succeeded",
        "predictions": describe(answer.probabilities),
    }
    # Built by hand, not validated again: FastAPI's response_model pass would double the work.
    return JSONResponse(
        body,
        headers={
            "Server-Timing": f"read;dur={(decoded - started) * 1000:.2f}, "
            f'model;dur={(finished - decoded) * 1000:.2f};desc="batch of {answer.batch_images}"'
        },
    )
