"""The Open Inference Protocol (OIP v2, KServe's and Triton's REST API) under /v2.

Health, server and model metadata, Triton's model configuration, and inference with JSON or
binary tensors, served from the same model cache and micro-batcher as POST /predict. The
route reads and splits the body itself: a binary request is not JSON.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from service import __version__
from service.api.deps import ModelServerDep, SettingsDep
from service.api.errors import protocol_error_responses
from service.api.security import authenticate
from service.api.served_models import add_model_reads, served_model
from service.api.uploads import read_body, refuse_encoding
from service.architecture import IMAGE_SIZE
from service.serving.batching import batch_sizes
from service.serving.model_server import ModelServer
from service.serving.names import MODEL_VERSION
from service.serving.tensors import (
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUTS,
    InferRequest,
    TensorError,
    TooManyImagesError,
    encode_response,
    parse_infer_request,
)
from service.settings import Settings

SERVER_NAME = "convlab"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
# The input's datatype as metadata states it; FP32 (0–1) is read too. UINT8 because every byte
# is a valid pixel: perf_analyzer's random data, read as FP32, is mostly NaN and out of range.
ADVERTISED_DATATYPE = "UINT8"
PLATFORM = "keras"
# Parsing JSON past this size costs more than a hop to a thread (one FP32 image as JSON takes
# about 8 kB; as binary, 3 kB).
INLINE_PARSE_BYTES = 16 * 1024

# Probes carry no key, as for /health.
public = APIRouter(tags=["open inference protocol"], responses=protocol_error_responses(503))
router = APIRouter(
    tags=["open inference protocol"],
    dependencies=[Depends(authenticate)],
    responses=protocol_error_responses(401, 404, 503),
)


@public.get("/v2")
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {
        "name": SERVER_NAME,
        "version": __version__,
        "extensions": EXTENSIONS,
    }


@public.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """Whether the server is up; 200 while it answers at all."""
    return {"live": True}


@public.get("/v2/health/ready", responses={503: {"description": "the database is unreachable"}})
async def ready(request: Request) -> JSONResponse:
    """Whether the server can serve: its database answered the last check, made every few
    seconds; like /health, the probe itself never waits on the database."""
    answered = request.app.state.workers_alive is not None
    return JSONResponse({"ready": answered}, status_code=200 if answered else 503)


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _metadata(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [_tensor(INPUT_NAME, ADVERTISED_DATATYPE, [-1, IMAGE_SIZE, IMAGE_SIZE, 1])],
        "outputs": [
            _tensor(output, datatype, shape) for output, (datatype, _, shape) in OUTPUTS.items()
        ],
    }


add_model_reads(
    router,
    "/v2/models/{name}{versions}",
    lambda name, _: _metadata(name),
    operation="oip_model_metadata",
    summary="The model's versions, platform, input (images: UINT8 0–255 or FP32 0–1), outputs",
)
add_model_reads(
    router,
    "/v2/models/{name}{versions}/ready",
    lambda name, _: {"name": name, "ready": True},
    operation="oip_model_ready",
    summary="200 when the model can serve (404 for an unknown one, 503 until it has trained)",
)


def _config_output(name: str) -> dict[str, Any]:
    datatype, _, shape = OUTPUTS[name]
    output = {"name": name, "data_type": f"TYPE_{datatype}", "dims": shape[1:]}
    if not output["dims"]:  # One number per image: Triton writes that as [1], reshaped to [].
        output.update(dims=[1], reshape={"shape": []})
    return output


def _config(name: str, settings: Settings) -> dict[str, Any]:
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "version_policy": {"specific": {"versions": [int(MODEL_VERSION)]}},
        "max_batch_size": settings.max_predict_instances,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": f"TYPE_{ADVERTISED_DATATYPE}",
                "format": "FORMAT_NHWC",
                "dims": [IMAGE_SIZE, IMAGE_SIZE, 1],
            }
        ],
        "output": [_config_output(output) for output in OUTPUTS],
        "dynamic_batching": {
            "preferred_batch_size": list(batch_sizes(settings.batch_max_images)),
            "max_queue_delay_microseconds": round(settings.batch_wait_seconds * 1e6),
        },
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }


add_model_reads(
    router,
    "/v2/models/{name}{versions}/config",
    _config,
    operation="oip_model_config",
    summary="Triton's model configuration, what perf_analyzer and model_analyzer read",
)


@contextmanager
def _tensor_errors() -> Iterator[None]:
    try:
        yield
    except TooManyImagesError as error:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error)) from None
    except TensorError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None


def _parse(body: bytes, header_length: str | None, settings: Settings) -> InferRequest:
    with _tensor_errors():
        return parse_infer_request(body, header_length, settings.max_predict_instances)


INFER_DOCS = {
    "responses": protocol_error_responses(400, 413, 415),
    "openapi_extra": {
        "requestBody": {
            "required": True,
            # JSON tensors, or the JSON header followed by binary tensor data.
            "content": {"application/json": {}, "application/octet-stream": {}},
        }
    },
}


@router.post("/v2/models/{name}/infer", **INFER_DOCS)
async def infer(
    request: Request, name: str, settings: SettingsDep, model_server: ModelServerDep
) -> Response:
    """Classify a batch of 28×28 images sent as the `images` tensor, as JSON or binary data."""
    return await _infer(request, name, None, settings, model_server)


@router.post("/v2/models/{name}/versions/{version}/infer", **INFER_DOCS)
async def infer_version(
    request: Request, name: str, version: str, settings: SettingsDep, model_server: ModelServerDep
) -> Response:
    """Inference with this version of the model."""
    return await _infer(request, name, version, settings, model_server)


async def _infer(
    request: Request,
    name: str,
    version: str | None,
    settings: Settings,
    model_server: ModelServer,
) -> Response:
    refuse_encoding(request)
    body = await read_body(request)
    header_length = request.headers.get(HEADER_LENGTH)
    experiment_id, batcher = await served_model(model_server, name, version)
    async with batcher.arriving() as ticket:
        if len(body) <= INLINE_PARSE_BYTES:
            parsed = _parse(body, header_length, settings)
        else:
            parsed = await run_in_threadpool(_parse, body, header_length, settings)
        answer = await batcher.predict(parsed.pixels, ticket)
    encoded = encode_response(
        name, MODEL_VERSION, parsed, answer.probabilities, {"experiment_id": experiment_id}
    )
    if encoded.header_length is None:
        return Response(encoded.body, media_type=JSONResponse.media_type)
    return Response(
        encoded.body,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(encoded.header_length)},
    )
