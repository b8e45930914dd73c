"""Open Inference Protocol v2 tensors: an inference request read, its response written.

A request is a JSON header, optionally followed by raw tensor bytes (the binary tensor data
extension: `Inference-Header-Content-Length` says where the JSON ends, each input's
`binary_data_size` how many bytes are its own). Responses use the same layout for the outputs
a client asks to get as binary. Pure numpy: the route (service/api/oip.py) does the HTTP.
"""

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.architecture import IMAGE_SIZE
from service.datasets import CLASS_NAMES
from service.serving.json_documents import InvalidJSONError, load_json

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "images"
PIXELS = IMAGE_SIZE * IMAGE_SIZE
# The datatypes an input may have, as little-endian numpy types; FP32 holds 0–1, UINT8 0–255.
INPUT_DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
# Each output: its datatype, its numpy type, and its shape with the batch first.
OUTPUTS = {
    "probabilities": ("FP32", np.dtype("<f4"), [-1, len(CLASS_NAMES)]),
    "labels": ("INT64", np.dtype("<i8"), [-1]),
}


class TensorError(ValueError):
    """The request breaks the protocol or does not fit the model; the message says how."""


class TooManyImagesError(TensorError):
    """The batch is over the number of images one request may send."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """What an inference request asks: its images and the outputs it wants, and how."""

    id: str | None
    pixels: np.ndarray  # N×28×28 float32 in [0, 1].
    outputs: tuple[RequestedOutput, ...]


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    header_length: int | None  # None: the body is all JSON.


def parse_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """The request in `body`, whose JSON ends at `header_length` (None: at the body's end)."""
    header, binary = _split(body, header_length)
    document = _json_object(header)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise TensorError(f"send one input, named {INPUT_NAME!r}, in 'inputs'")
    pixels, used = _input_pixels(inputs[0], binary, max_images)
    if used != len(binary):
        raise TensorError(
            f"{len(binary) - used} bytes of binary data follow the inputs' binary_data_size"
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("the request 'id' must be a string")
    return InferRequest(request_id, pixels, _requested_outputs(document))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    length = header_length.strip()
    if not (length.isascii() and length.isdigit() and len(length) <= 20):
        raise TensorError(f"{HEADER_LENGTH} must be a byte count")
    if int(length) > len(body):
        raise TensorError(
            f"{HEADER_LENGTH} is {int(length):,}, past the body's {len(body):,} bytes"
        )
    view = memoryview(body)
    return bytes(view[: int(length)]), view[int(length) :]


def _json_object(header: bytes) -> dict[str, Any]:
    try:
        document = load_json(header, "the request header")
    except InvalidJSONError as error:
        raise TensorError(str(error)) from None
    if not isinstance(document, dict):
        raise TensorError("the request header must be a JSON object")
    return document


def _input_pixels(
    tensor: dict[str, Any], binary: memoryview, max_images: int
) -> tuple[np.ndarray, int]:
    """The input's pixels as N×28×28 float32, and how many binary bytes it took."""
    if tensor.get("name") != INPUT_NAME:
        raise TensorError(f"the model's input is named {INPUT_NAME!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in INPUT_DATATYPES:
        raise TensorError(
            f"datatype {str(datatype)[:20]!r} is not served: send FP32 (0–1) or UINT8 (0–255)"
        )
    count = _batch_size(tensor.get("shape"), max_images)
    dtype = INPUT_DATATYPES[datatype]
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        values, used = _binary_values(size, count, dtype, binary), count * PIXELS * dtype.itemsize
    else:
        values, used = _json_values(tensor.get("data"), count, datatype), 0
    return _scaled(values.reshape(count, IMAGE_SIZE, IMAGE_SIZE), datatype), used


def _batch_size(shape: object, max_images: int) -> int:
    """The batch size of a [N, 28, 28, 1] (or [N, 28, 28]) shape."""
    valid = (
        isinstance(shape, list)
        and all(type(dimension) is int for dimension in shape)
        and len(shape) in (3, 4)
        and shape[1:] in ([IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, IMAGE_SIZE, 1])
        and shape[0] >= 1
    )
    if not valid:
        raise TensorError(
            f"shape {str(shape)[:60]} does not fit the model: send [N, 28, 28, 1] with N ≥ 1"
        )
    if shape[0] > max_images:
        count = str(shape[0]) if shape[0] < 10**20 else "over 10**20"
        raise TooManyImagesError(f"{count} images, over the limit of {max_images}")
    return shape[0]


def _binary_values(size: object, count: int, dtype: np.dtype, binary: memoryview) -> np.ndarray:
    expected = count * PIXELS * dtype.itemsize
    if type(size) is not int:
        raise TensorError("binary_data_size must be an integer: the input's size in bytes")
    if size != expected:
        raise TensorError(
            f"binary_data_size is {size:,}, but {count} images of 28×28 "
            f"{dtype.itemsize}-byte values take {expected:,} bytes"
        )
    if size > len(binary):
        raise TensorError(f"the body holds {len(binary):,} bytes of binary data, not {size:,}")
    return np.frombuffer(binary[:size], dtype=dtype)


def _json_values(data: object, count: int, datatype: str) -> np.ndarray:
    if not isinstance(data, list):
        raise TensorError("send the input's values in 'data', or as binary_data_size bytes")
    try:
        values = np.asarray(data)
    except ValueError:
        raise TensorError("the input's 'data' is ragged: send a flat list of numbers") from None
    if values.dtype.kind not in "iuf":
        raise TensorError("the input's 'data' must hold numbers only")
    if values.size != count * PIXELS:
        raise TensorError(
            f"'data' holds {values.size:,} values; the shape needs {count * PIXELS:,}"
        )
    whole = values.dtype.kind in "iu" or np.all(values == np.round(values))
    if datatype == "UINT8" and not whole:
        raise TensorError("UINT8 values must be whole numbers")
    return values.reshape(-1)


def _scaled(values: np.ndarray, datatype: str) -> np.ndarray:
    """The pixels in [0, 1] as float32; out-of-range values are refused, not clipped."""
    if datatype == "UINT8":
        if values.dtype != np.uint8 and (values.min() < 0 or values.max() > 255):
            raise TensorError("UINT8 values must be between 0 and 255")
        return values.astype(np.float32) / np.float32(255)
    pixels = values.astype(np.float32, copy=False)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise TensorError("FP32 pixels must be finite and between 0 and 1 (send 0–255 as UINT8)")
    return pixels


def _requested_outputs(document: dict[str, Any]) -> tuple[RequestedOutput, ...]:
    parameters = document.get("parameters") or {}
    binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    outputs = document.get("outputs")
    if not outputs:  # Missing or empty: every output, as Triton and KServe answer.
        return tuple(RequestedOutput(name, binary) for name in OUTPUTS)
    if not isinstance(outputs, list):
        raise TensorError("'outputs' must be a list of outputs, each {'name': ...}")
    requested = tuple(_requested_output(output, binary) for output in outputs)
    if len({output.name for output in requested}) < len(requested):
        raise TensorError("'outputs' names an output twice")
    return requested


def _requested_output(output: object, binary: bool) -> RequestedOutput:
    name = output.get("name") if isinstance(output, dict) else None
    if not isinstance(name, str) or name not in OUTPUTS:
        raise TensorError(f"the model's outputs are {', '.join(map(repr, OUTPUTS))}")
    parameters = output.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TensorError(f"the parameters of output {name!r} must be an object")
    if parameters.get("classification"):
        raise TensorError("the classification extension is not served: request 'labels'")
    return RequestedOutput(name, parameters.get("binary_data", binary) is True)


def encode_response(
    model_name: str,
    version: str,
    request: InferRequest,
    probabilities: np.ndarray,
    parameters: dict[str, Any],
) -> EncodedResponse:
    """The response to `request`: its outputs as JSON data, or as binary after the JSON."""
    arrays = {"probabilities": probabilities, "labels": np.argmax(probabilities, axis=1)}
    outputs, chunks = [], []
    for requested in request.outputs:
        datatype, dtype, _ = OUTPUTS[requested.name]
        array = np.ascontiguousarray(arrays[requested.name], dtype=dtype)
        tensor = {"name": requested.name, "datatype": datatype, "shape": list(array.shape)}
        if requested.binary:
            chunks.append(array.tobytes())
            tensor["parameters"] = {"binary_data_size": array.nbytes}
        else:
            tensor["data"] = array.reshape(-1).tolist()
        outputs.append(tensor)
    document: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request.id is not None:
        document["id"] = request.id
    document["parameters"] = parameters
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *chunks]), len(header))
