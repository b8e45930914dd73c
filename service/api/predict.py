"""POST /predict: classify uploaded images with a trained experiment's model.

This module reads the request and writes the response; the model server (service/serving/)
chooses, loads and batches the model.
"""

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from service.api.deps import ModelServerDep, SettingsDep
from service.api.errors import error_responses
from service.api.image_batches import decoded_batch
from service.api.security import authenticate
from service.api.uploads import (
    MalformedMultipartError,
    multipart_field,
    payload_too_large,
    read_body,
)
from service.architecture import IMAGE_SIZE
from service.datasets import CLASS_NAMES
from service.schemas import MAX_DATABASE_ID, PredictResponse
from service.serving.json_documents import InvalidJSONError, load_json
from service.serving.model_server import ModelServer, ServedModel
from service.serving.resolver import ExperimentNotFoundError, ModelNotReadyError
from service.settings import Settings

router = APIRouter(tags=["predict"], dependencies=[Depends(authenticate)])

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
        document = load_json(body, "the body")
    except InvalidJSONError as error:
        raise _unprocessable(str(error)) from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise _unprocessable('send {"instances": [...]} with 28×28 arrays or {"b64": ...} items')
    if len(instances) > settings.max_predict_instances:
        raise payload_too_large(
            f"{len(instances)} instances, over the limit of {settings.max_predict_instances}"
        )
    return instances


async def _serving_model(model_server: ModelServer, experiment_id: int | None) -> ServedModel:
    """The model that serves this request, or the 404 or 409 that says why none can."""
    try:
        return await model_server.model_for(experiment_id)
    except ExperimentNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except ModelNotReadyError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None


def predictions_from(probabilities: np.ndarray) -> list[dict]:
    """The response's prediction for each row of class probabilities."""
    predictions = []
    for row in probabilities:
        label = int(np.argmax(row))
        predictions.append(
            {
                "label": label,
                "class_name": CLASS_NAMES[label],
                "confidence": float(row[label]),
                "probabilities": [float(p) for p in row],
            }
        )
    return predictions


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 503),
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def predict(
    request: Request,
    settings: SettingsDep,
    model_server: ModelServerDep,
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
    chosen_id, batcher = await _serving_model(model_server, experiment_id)
    async with batcher.arriving() as ticket:
        pixels = await decoded_batch(
            lambda: _uploads(content_type, media_type, body, settings), len(body), settings, invert
        )
        decoded = time.perf_counter()
        answer = await batcher.predict(pixels, ticket)
    finished = time.perf_counter()
    response = {
        "experiment_id": chosen_id,
        "model_selection": "requested" if experiment_id is not None else "latest_succeeded",
        "predictions": predictions_from(answer.probabilities),
    }
    # Built by hand, not validated again: FastAPI's response_model pass would double the work.
    return JSONResponse(
        response,
        headers={
            "Server-Timing": f"read;dur={(decoded - started) * 1000:.2f}, "
            f'model;dur={(finished - decoded) * 1000:.2f};desc="batch of {answer.batch_images}"'
        },
    )
