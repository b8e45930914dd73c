"""TensorFlow Serving's REST API under /v1: model status, metadata and :predict.

Rows (`instances`) or columns (`inputs`) of 28×28 arrays or {"b64": ...} images, answered with
`predictions` or `outputs`, from the same model cache and micro-batcher as POST /predict.
"""

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from service.api.deps import ModelServerDep, SettingsDep
from service.api.errors import protocol_error_responses
from service.api.image_batches import decoded_batch
from service.api.security import authenticate
from service.api.served_models import add_model_reads, served_model
from service.api.uploads import payload_too_large, read_body, refuse_encoding
from service.architecture import IMAGE_SIZE
from service.datasets import CLASS_NAMES
from service.serving.json_documents import InvalidJSONError, load_json
from service.serving.model_server import ModelServer
from service.serving.names import MODEL_VERSION
from service.serving.tensors import INPUT_NAME
from service.settings import Settings

SIGNATURE = "serving_default"


class SegmentConvertor(StringConvertor):
    """A model name or version in a path, without `:`: `/v1/models/x:predict` is never the
    model `x:predict` (so a GET there is a 405 that names POST only)."""

    regex = "[^/:]+"


register_url_convertor("segment", SegmentConvertor())
# As the OpenAPI document states it.
Segment = Annotated[str, Path(pattern="^[^/:]+$")]
PREDICT_METHOD = "tensorflow/serving/predict"

router = APIRouter(
    tags=["tensorflow serving"],
    dependencies=[Depends(authenticate)],
    responses=protocol_error_responses(401, 404, 503),
)


@dataclass(frozen=True)
class PredictRequest:
    uploads: list  # 28×28 arrays and {"b64": ...} objects, one per image.
    columnar: bool  # Sent as `inputs`, answered as `outputs`.


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def _version_status(name: str) -> dict[str, Any]:
    # `name` and `ready` are what KServe's v1 protocol reads from this same route.
    return {
        "model_version_status": [
            {
                "version": MODEL_VERSION,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ],
        "name": name,
        "ready": True,
    }


add_model_reads(
    router,
    "/v1/models/{name}{versions}",
    lambda name, _: _version_status(name),
    convertor=":segment",
    segment=Segment,
    operation="tfs_model_status",
    summary="The model's version, AVAILABLE (404 for an unknown model, 503 until it has trained)",
)


def _tensor_info(dims: list[int], tensor: str) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in dims],
            "unknown_rank": False,
        },
        "name": tensor,
    }


def _metadata(name: str) -> dict[str, Any]:
    signature = {
        "inputs": {
            INPUT_NAME: _tensor_info([-1, IMAGE_SIZE, IMAGE_SIZE, 1], f"{SIGNATURE}_{INPUT_NAME}:0")
        },
        "outputs": {
            "probabilities": _tensor_info([-1, len(CLASS_NAMES)], "StatefulPartitionedCall:0")
        },
        "method_name": PREDICT_METHOD,
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": MODEL_VERSION},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }


add_model_reads(
    router,
    "/v1/models/{name}{versions}/metadata",
    lambda name, _: _metadata(name),
    convertor=":segment",
    segment=Segment,
    operation="tfs_model_metadata",
    summary="The model's serving signature: images in, probabilities out",
)


def _row(instance: object) -> object:
    """A row-format instance: an image, or {"images": image} naming the input."""
    if isinstance(instance, dict) and set(instance) == {INPUT_NAME}:
        return instance[INPUT_NAME]
    return instance


def _as_floats(upload: object) -> object:
    """An array read as the signature's DT_FLOAT however JSON spells its numbers: JavaScript
    and Go write 1.0 as `1`, which /predict would read as 1/255 in an all-integer array."""
    if not isinstance(upload, list):
        return upload  # An image file ({"b64": ...}), or what open_instance refuses.
    try:
        array = np.asarray(upload)
    except ValueError:
        return upload  # Ragged: parse_array says so.
    return array.astype(np.float64) if array.dtype.kind in "iu" else array


def _columns(inputs: object) -> list:
    """The columnar format's one input: the list itself, or {"images": [...]}."""
    if isinstance(inputs, dict):
        if set(inputs) != {INPUT_NAME}:
            raise _bad_request(f"the model's only input is {INPUT_NAME!r}")
        inputs = inputs[INPUT_NAME]
    if not isinstance(inputs, list):
        raise _bad_request(f"'inputs' must be a list of images, or {{{INPUT_NAME!r}: [...]}}")
    return inputs


def _predict_request(body: bytes, settings: Settings) -> PredictRequest:
    try:
        document = load_json(body, "the body")
    except InvalidJSONError as error:
        raise _bad_request(str(error)) from None
    if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
        raise _bad_request('send {"instances": [...]} (rows) or {"inputs": [...]} (columns)')
    # TensorFlow Serving reads a missing or empty name as the default.
    signature = document.get("signature_name") or SIGNATURE
    if signature != SIGNATURE:
        raise _bad_request(f"the model's only signature is {SIGNATURE!r}")
    if "instances" in document:
        if not isinstance(document["instances"], list):
            raise _bad_request("'instances' must be a list of images")
        request = PredictRequest([_row(item) for item in document["instances"]], False)
    else:
        request = PredictRequest(_columns(document["inputs"]), True)
    if not request.uploads:
        raise _bad_request("send at least one image")
    if len(request.uploads) > settings.max_predict_instances:
        raise payload_too_large(
            f"{len(request.uploads)} images, over the limit of {settings.max_predict_instances}"
        )
    return PredictRequest([_as_floats(upload) for upload in request.uploads], request.columnar)


PREDICT_DOCS = {
    "responses": protocol_error_responses(400, 413, 415),
    "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {}}}},
}


@router.post("/v1/models/{name:segment}:predict", **PREDICT_DOCS)
async def predict(
    request: Request, name: Segment, settings: SettingsDep, model_server: ModelServerDep
) -> JSONResponse:
    """Class probabilities for each image: 28×28 (or 28×28×1) arrays of 0–1 pixels, or
    {"b64": ...} image files."""
    return await _predict(request, name, None, settings, model_server)


@router.post("/v1/models/{name:segment}/versions/{version:segment}:predict", **PREDICT_DOCS)
async def predict_version(
    request: Request,
    name: Segment,
    version: Segment,
    settings: SettingsDep,
    model_server: ModelServerDep,
) -> JSONResponse:
    """Class probabilities from this version of the model."""
    return await _predict(request, name, version, settings, model_server)


async def _predict(
    request: Request,
    name: str,
    version: str | None,
    settings: Settings,
    model_server: ModelServer,
) -> JSONResponse:
    refuse_encoding(request)
    body = await read_body(request)
    _, batcher = await served_model(model_server, name, version)
    parsed: list[PredictRequest] = []

    def uploads() -> list:
        # Called by decoded_batch, in the same thread as the decoding when the body is large.
        parsed.append(_predict_request(body, settings))
        return parsed[0].uploads

    async with batcher.arriving() as ticket:
        pixels = await decoded_batch(uploads, len(body), settings, None)
        answer = await batcher.predict(pixels, ticket)
    key = "outputs" if parsed[0].columnar else "predictions"
    return JSONResponse({key: answer.probabilities.tolist()})
