"""Open Inference Protocol tensors read and written without a server (serving/tensors.py)."""

import json

import numpy as np
import pytest

from service.serving.tensors import (
    InferRequest,
    RequestedOutput,
    TensorError,
    encode_response,
    parse_infer_request,
)

rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)


def request(shape=(3, 28, 28, 1), datatype="UINT8", **fields) -> dict:
    tensor = {"name": "images", "datatype": datatype, "shape": list(shape)}
    return {"inputs": [{**tensor, **fields}]}


def parse(document: dict, binary: bytes = b"") -> InferRequest:
    header = json.dumps(document).encode()
    return parse_infer_request(header + binary, str(len(header)) if binary else None, 256)


def test_json_data_flat_or_nested_and_binary_data_give_the_same_pixels():
    flat = parse(request(data=IMAGES.reshape(-1).tolist()))
    nested = parse(request(shape=(3, 28, 28), data=IMAGES.tolist()))
    binary = parse(request(parameters={"binary_data_size": IMAGES.nbytes}), IMAGES.tobytes())
    expected = IMAGES.astype(np.float32) / np.float32(255)
    for parsed in (flat, nested, binary):
        assert parsed.pixels.dtype == np.float32
        np.testing.assert_array_equal(parsed.pixels, expected)
    as_floats = expected[..., np.newaxis]
    fp32 = parse(
        request(datatype="FP32", parameters={"binary_data_size": as_floats.nbytes}),
        as_floats.astype("<f4").tobytes(),
    )
    np.testing.assert_array_equal(fp32.pixels, expected)


def test_outputs_default_to_both_and_follow_the_binary_switches():
    data = {"data": IMAGES.reshape(-1).tolist()}
    assert parse(request(**data)).outputs == (
        RequestedOutput("probabilities", False),
        RequestedOutput("labels", False),
    )
    everything_binary = {**request(**data), "parameters": {"binary_data_output": True}}
    assert all(output.binary for output in parse(everything_binary).outputs)
    chosen = {
        **everything_binary,
        "outputs": [{"name": "labels", "parameters": {"binary_data": False}}],
    }
    assert parse(chosen).outputs == (RequestedOutput("labels", False),)


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({**request(data=[0] * 2352), "id": 7}, "'id' must be a string"),
        (request(data=[[0] * 784, [0] * 5, [0] * 784]), "ragged"),
        (request(data=[0.5] * 2352), "whole numbers"),
        (request(data=[-1] * 2352), "between 0 and 255"),
        (request(datatype="FP32", data=[float("nan")] * 2352), "finite"),
        (request(shape=(0, 28, 28, 1)), "N ≥ 1"),
        (request(shape=(3, 28, 28, True)), "shape"),
        ({"inputs": [request()["inputs"][0]] * 2}, "one input"),
        (
            {
                **request(data=[0] * 2352),
                "outputs": [{"name": "labels", "parameters": ["binary_data"]}],
            },
            "object",
        ),
        (
            {
                **request(data=[0] * 2352),
                "outputs": [{"name": "labels", "parameters": {"classification": 3}}],
            },
            "classification",
        ),
    ],
)
def test_malformed_requests_say_what_is_wrong(document, words):
    with pytest.raises(TensorError, match=words):
        parse(document)


def test_binary_outputs_follow_the_json_header_in_order():
    probabilities = rng.random((3, 10), dtype=np.float32)
    outputs = (RequestedOutput("labels", True), RequestedOutput("probabilities", True))
    parsed = InferRequest("a", np.zeros((3, 28, 28), np.float32), outputs)
    encoded = encode_response("latest", "1", parsed, probabilities, {"experiment_id": 4})
    header = json.loads(encoded.body[: encoded.header_length])
    assert header["id"] == "a" and header["parameters"] == {"experiment_id": 4}
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    assert sizes == [3 * 8, 3 * 10 * 4]
    rest = encoded.body[encoded.header_length :]
    labels = np.frombuffer(rest[:24], "<i8")
    np.testing.assert_array_equal(labels, probabilities.argmax(1))
    np.testing.assert_array_equal(np.frombuffer(rest[24:], "<f4").reshape(3, 10), probabilities)
    as_json = encode_response(
        "latest",
        "1",
        InferRequest(None, parsed.pixels, (RequestedOutput("labels", False),)),
        probabilities,
        {},
    )
    assert as_json.header_length is None
    assert json.loads(as_json.body)["outputs"][0]["data"] == probabilities.argmax(1).tolist()
