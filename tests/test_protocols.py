"""The serving protocols, spoken by their own clients against a live server with trained models.

tritonclient and the kserve SDK speak the Open Inference Protocol (/v2); kserve's v1 client
and plain httpx speak TensorFlow Serving's REST API (/v1). Every answer is checked against
POST /predict on the same images.
"""

import asyncio
import base64
import io
import json

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse
from PIL import Image
from tritonclient.utils import InferenceServerException

from service import __version__
from service.api import create_app
from service.settings import Settings
from tests.conftest import TINY_SPEC, api_process, train_queued, upgrade

BASE = {key: value for key, value in TINY_SPEC.items() if key != "seed"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, kept_trainers):
    """A live server holding a trained experiment, a two-variant study, and a queued run."""
    directory = tmp_path_factory.mktemp("protocols")
    url = f"sqlite:///{directory / 'test.db'}"
    upgrade(url)
    settings = Settings(database_url=url, allowed_hosts=["testserver"], _env_file=None)
    with TestClient(create_app(settings)) as client:
        experiment = client.post("/experiments", json={**TINY_SPEC, "epochs": 1}).json()
        study = {"name": "width", "base": {**BASE, "epochs": 1}, "grid": {"filters": [4, 8]}}
        study = client.post("/studies", json=study).json()
        train_queued(settings, kept_trainers)
        queued = client.post("/experiments", json=TINY_SPEC).json()
        listed = client.get("/experiments", params={"study_id": study["id"]}).json()["items"]
        runs = [client.get(f"/experiments/{run['id']}").json() for run in listed]
    with api_process(url, directory / "api.log") as base:
        yield {
            "base": base,
            "experiment": experiment["id"],
            "study": study["id"],
            "study_runs": runs,
            "queued": queued["id"],
            "url": url,
        }


@pytest.fixture(scope="module")
def images(dataset) -> np.ndarray:
    return dataset.test_images[:64]


@pytest.fixture(scope="module")
def reference(served, images) -> np.ndarray:
    """What POST /predict answers for the images, as 0–255 integer arrays."""
    response = httpx.post(
        f"{served['base']}/predict",
        params={"experiment_id": served["experiment"]},
        json={"instances": images.tolist()},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def host(served) -> str:
    return served["base"].removeprefix("http://")


def as_input(images: np.ndarray, datatype: str) -> np.ndarray:
    pixels = images[..., np.newaxis]
    return pixels.astype(np.float32) / 255 if datatype == "FP32" else pixels.astype(np.uint8)


def test_tritonclient_reads_health_metadata_and_config(served):
    client = triton.InferenceServerClient(host(served))
    name = f"experiment-{served['experiment']}"
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, model_version="1")
    assert not client.is_model_ready(name, model_version="2")
    assert not client.is_model_ready("experiment-999999")
    assert not client.is_model_ready(f"experiment-{served['queued']}")  # Still queued.
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(name)
    assert metadata["versions"] == ["1"]
    # UINT8, so that perf_analyzer's random bytes are pixels; FP32 is read too.
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in metadata["outputs"]
    config = client.get_model_config(name)
    assert config["max_batch_size"] >= 64
    assert config["input"][0]["dims"] == [28, 28, 1]
    assert [output["name"] for output in config["output"]] == ["probabilities", "labels"]
    assert client.get_server_metadata()["version"] == __version__


@pytest.mark.parametrize("count", [1, 7, 64])
def test_tritonclient_infer_agrees_with_predict(served, images, reference, count):
    """FP32 and UINT8, inputs as binary and as JSON, outputs as binary and as JSON."""
    client = triton.InferenceServerClient(host(served))
    name = f"experiment-{served['experiment']}"
    for datatype in ("FP32", "UINT8"):
        for binary_input in (True, False):
            for binary_output in (True, False):
                tensor = triton.InferInput("images", [count, 28, 28, 1], datatype)
                tensor.set_data_from_numpy(as_input(images[:count], datatype), binary_input)
                outputs = [
                    triton.InferRequestedOutput(output, binary_data=binary_output)
                    for output in ("probabilities", "labels")
                ]
                result = client.infer(name, [tensor], outputs=outputs, request_id="r-42")
                probabilities = result.as_numpy("probabilities")
                assert probabilities.shape == (count, 10)
                np.testing.assert_allclose(probabilities, reference[:count], atol=1e-5)
                assert (probabilities.argmax(1) == reference[:count].argmax(1)).all()
                assert (result.as_numpy("labels") == reference[:count].argmax(1)).all()
                assert result.get_response()["id"] == "r-42"


def test_tritonclient_outputs_default_to_all_in_binary(served, images, reference):
    client = triton.InferenceServerClient(host(served))
    tensor = triton.InferInput("images", [3, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(as_input(images[:3], "UINT8"))
    result = client.infer("latest", [tensor])
    outputs = {output["name"]: output for output in result.get_response()["outputs"]}
    assert set(outputs) == {"probabilities", "labels"}
    assert outputs["probabilities"]["parameters"]["binary_data_size"] == 3 * 10 * 4


def test_model_names_resolve_to_experiments(served, images):
    """`latest` is the last run to succeed; `study-N-best` the best run of the best variant."""
    client = triton.InferenceServerClient(host(served))
    tensor = triton.InferInput("images", [1, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(as_input(images[:1], "UINT8"))

    def served_by(name: str) -> int:
        return client.infer(name, [tensor]).get_response()["parameters"]["experiment_id"]

    runs = served["study_runs"]
    assert served_by("latest") == max(runs, key=lambda run: run["finished_at"])["id"]
    # Each variant ran once here; ties go to the earliest run.
    best = max(sorted(runs, key=lambda run: run["id"]), key=lambda run: run["test"]["accuracy"])
    assert served_by(f"study-{served['study']}-best") == best["id"]
    assert served_by(f"experiment-{served['experiment']}") == served["experiment"]
    with pytest.raises(InferenceServerException, match="no model 'resnet'"):
        client.infer("resnet", [tensor])
    with pytest.raises(InferenceServerException, match="study 999 does not exist"):
        client.infer("study-999-best", [tensor])


def test_kserve_client_speaks_both_protocols(served, images, reference):
    name = f"experiment-{served['experiment']}"

    async def scenario() -> None:
        v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
        assert await v2.is_server_live(served["base"])
        assert await v2.is_server_ready(served["base"])
        assert await v2.is_model_ready(served["base"], name)
        assert not await v2.is_model_ready(served["base"], "experiment-999999")
        for binary in (False, True):
            tensor = InferInput("images", [5, 28, 28, 1], "FP32")
            tensor.set_data_from_numpy(as_input(images[:5], "FP32"), binary_data=binary)
            request = InferRequest(name, infer_inputs=[tensor], request_id="k-1")
            response = await v2.infer(served["base"], request, model_name=name)
            probabilities = response.outputs[0].as_numpy()
            np.testing.assert_allclose(probabilities, reference[:5], atol=1e-5)
        await v2.close()
        v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
        assert await v1.is_model_ready(served["base"], name)
        assert not await v1.is_model_ready(served["base"], f"experiment-{served['queued']}")
        body = {"instances": (images[:5] / 255).tolist()}
        answer = await v1.infer(served["base"], body, model_name=name)
        np.testing.assert_allclose(answer["predictions"], reference[:5], atol=1e-5)
        await v1.close()

    asyncio.run(scenario())
    # kserve's REST client has no metadata call; its own response models read ours.
    ServerMetadataResponse.model_validate(httpx.get(f"{served['base']}/v2").json())
    metadata = httpx.get(f"{served['base']}/v2/models/{name}").json()
    assert ModelMetadataResponse.model_validate(metadata).inputs[0].name == "images"


def png_b64(pixels: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"b64": base64.b64encode(buffer.getvalue()).decode()}


def test_tensorflow_serving_rows_columns_and_b64(served, images, reference):
    name = f"experiment-{served['experiment']}"
    base = f"{served['base']}/v1/models/{name}"
    arrays = (images[:4] / 255).tolist()  # DT_FLOAT, as the signature says.
    bodies = {
        "predictions": [
            {"instances": arrays},
            {"instances": [[[[v] for v in row] for row in image] for image in arrays]},
            {"instances": [{"images": image} for image in arrays]},
            {"instances": [png_b64(image) for image in images[:4]]},
            {"signature_name": "serving_default", "instances": arrays},
            {"signature_name": "", "instances": arrays},
        ],
        "outputs": [{"inputs": arrays}, {"inputs": {"images": arrays}}],
    }
    for key, variants in bodies.items():
        for body in variants:
            for url in (
                f"{base}:predict",
                f"{base}/versions/1:predict",
                f"{base}/versions/01:predict",
            ):
                response = httpx.post(url, json=body, timeout=30)
                assert response.status_code == 200, response.text
                np.testing.assert_allclose(response.json()[key], reference[:4], atol=1e-5)
    status = httpx.get(base).json()["model_version_status"]
    assert status == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    signature = httpx.get(f"{base}/metadata").json()["metadata"]["signature_def"]
    inputs = signature["signature_def"]["serving_default"]["inputs"]
    assert [d["size"] for d in inputs["images"]["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]


def binary_request(header: dict, data: bytes, length: int | None = None) -> dict:
    encoded = json.dumps(header).encode()
    return {
        "content": encoded + data,
        "headers": {"Inference-Header-Content-Length": str(length or len(encoded))},
    }


def image_input(datatype: str = "FP32", shape=(1, 28, 28, 1), **extra) -> dict:
    return {"inputs": [{"name": "images", "datatype": datatype, "shape": list(shape), **extra}]}


PIXELS = np.zeros((1, 28, 28, 1), np.float32).tobytes()


@pytest.mark.parametrize(
    ("path", "request_args", "status", "words"),
    [
        ("/v2/models/resnet/infer", {"json": image_input(data=[0] * 784)}, 404, "no model"),
        ("/v2/models/experiment-999999/ready", {}, 404, "does not exist"),
        ("/v1/models/resnet:predict", {"json": {"instances": []}}, 404, "no model"),
        ("/v1/models/latest/versions/7", {}, 404, "no version '7'"),
        ("/v2/models/latest/infer", {"json": image_input("FP64", data=[0] * 784)}, 400, "FP64"),
        ("/v2/models/latest/infer", {"json": image_input(shape=[1, 32, 32, 1])}, 400, "shape"),
        ("/v2/models/latest/infer", {"json": image_input(data=[0] * 783)}, 400, "783 values"),
        ("/v2/models/latest/infer", {"json": image_input(data=[2.0] * 784)}, 400, "between 0"),
        ("/v2/models/latest/infer", {"json": image_input(data=["0"] * 784)}, 400, "numbers"),
        ("/v2/models/latest/infer", {"content": b"{"}, 400, "not valid JSON"),
        # Unhashable where a name is expected: a set look-up would raise TypeError.
        ("/v2/models/latest/infer", {"json": image_input(["FP32"], data=[0] * 784)}, 400, "FP32"),
        (
            "/v2/models/latest/infer",
            {"json": {**image_input(data=[0] * 784), "outputs": [{"name": ["labels"]}]}},
            400,
            "outputs are",
        ),
        (
            "/v2/models/latest/infer",
            binary_request(image_input(parameters={"binary_data_size": 3136}), PIXELS, 10**6),
            400,
            "past the body",
        ),
        (
            "/v2/models/latest/infer",
            binary_request(image_input(parameters={"binary_data_size": 3000}), PIXELS),
            400,
            "take 3,136 bytes",
        ),
        (
            "/v2/models/latest/infer",
            binary_request(image_input(parameters={"binary_data_size": 3136}), PIXELS[:100]),
            400,
            "binary data",
        ),
        (
            "/v2/models/latest/infer",
            binary_request(image_input(parameters={"binary_data_size": 3136}), PIXELS * 2),
            400,
            "follow",
        ),
        (
            "/v2/models/latest/infer",
            {"content": b"x" * (5 * 1024 * 1024 + 1)},
            413,
            "limit",
        ),
        ("/v2/models/latest/infer", {"json": image_input(shape=[999, 28, 28, 1])}, 413, "999"),
        ("/v1/models/latest:predict", {"json": {"instances": [[[255] * 28] * 28]}}, 400, "0 and 1"),
        ("/v1/models/latest:predict", {"json": {"instances": [[0] * 784]}}, 400, "[784]"),
        (
            "/v1/models/latest:predict",
            {"json": {"instances": [[[True] * 28] * 28]}},
            400,
            "numbers",
        ),
        (
            "/v1/models/latest:predict",
            {"content": b"\x1f\x8b", "headers": {"content-encoding": "gzip"}},
            415,
            "gzip",
        ),
        ("/v1", {}, 404, "Not Found"),
        (
            "/v2/models/latest/infer",
            {"json": image_input(data=[0] * 784), "headers": {"origin": "http://evil.example"}},
            403,
            "evil.example",
        ),
        (
            "/v2/models/latest/infer",
            {"json": {**image_input(data=[0] * 784), "outputs": [{"name": "labels"}] * 2}},
            400,
            "twice",
        ),
        ("/v1/models/latest:predict", {"json": {"rows": []}}, 400, "instances"),
        ("/v2/models/experiment-{queued}/infer", {"json": image_input()}, 503, "queued"),
        ("/v1/models/experiment-{queued}", {}, 503, "queued"),
        ("/v2/models", {}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_the_protocol_error_body(served, path, request_args, status, words):
    method = "GET" if not request_args else "POST"
    url = served["base"] + path.replace("{queued}", str(served["queued"]))
    response = httpx.request(method, url, timeout=30, **request_args)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and words in body["error"], body


def test_with_keys_set_models_need_one_and_probes_do_not(served):
    key = {"Authorization": "Bearer " + "k" * 32}
    settings = Settings(
        database_url=served["url"],
        api_keys=["k" * 32],
        allowed_hosts=["testserver"],
        _env_file=None,
    )
    blank = image_input(data=[0] * 784)
    with TestClient(create_app(settings)) as client:
        refused = client.get("/v2/models/latest")
        assert refused.status_code == 401
        assert "needs a key" in refused.json()["error"]
        assert client.post("/v1/models/latest:predict", json={}).json().keys() == {"error"}
        assert client.post("/v2/models/latest/infer", json=blank).status_code == 401
        assert client.get("/v2/models/latest", headers=key).status_code == 200
        # Probes need no key, and come by address: an orchestrator names no allowed host.
        for probe in ("/v2/health/ready", "/v2/health/live", "/health"):
            response = client.get(probe, headers={"host": "10.1.2.3:8000"})
            assert response.status_code == 200, probe
        assert client.get("/v2/models/latest", headers={"host": "10.1.2.3:8000"}).status_code == 400
    open_reads = settings.model_copy(update={"auth_reads": False})
    with TestClient(create_app(open_reads)) as client:
        # AUTH_READS=false opens predictions, whichever protocol carries them.
        assert client.post("/v2/models/latest/infer", json=blank).status_code == 200
        instances = {"instances": [[[0.0] * 28] * 28]}
        assert client.post("/v1/models/latest:predict", json=instances).status_code == 200
        assert client.post("/experiments", json=TINY_SPEC).status_code == 401


def test_integer_spelled_pixels_read_as_floats_and_empty_outputs_mean_all(served, images):
    """JavaScript writes 1.0 as 1: TF Serving's DT_FLOAT input reads it as 1.0, not 1/255."""
    base = f"{served['base']}/v1/models/latest:predict"
    binary = (images[:3] > 127).astype(int)
    as_integers = httpx.post(base, json={"instances": binary.tolist()}, timeout=30).json()
    as_floats = httpx.post(base, json={"instances": binary.astype(float).tolist()}, timeout=30)
    assert as_integers == as_floats.json()
    every = httpx.post(
        f"{served['base']}/v2/models/latest/infer",
        json={**image_input(data=[0] * 784), "outputs": []},
        timeout=30,
    ).json()
    assert [output["name"] for output in every["outputs"]] == ["probabilities", "labels"]
