"""POST /predict on a model trained from real Fashion-MNIST images."""

import base64
import io
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from service.api import create_app, image_batches
from service.settings import Settings
from tests.conftest import ROOT, free_port, train_queued, upgrade, wait_for_api

SAMPLE = 200


@pytest.fixture(scope="module")
def predict_database(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('predict') / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="module")
def trained(predict_database, kept_trainers):
    """One experiment trained on 3,000 images, served by a client with a small upload limit."""
    url = predict_database
    settings = Settings(
        database_url=url,
        max_upload_bytes=2_000_000,
        max_image_pixels=4_000_000,
        allowed_hosts=["testserver"],
        _env_file=None,
    )
    with TestClient(create_app(settings)) as client:
        spec = {"conv_layers": 1, "filters": 16, "epochs": 2, "train_samples": 3000, "seed": 3}
        experiment = client.post("/experiments", json=spec).json()
        train_queued(settings, kept_trainers)
        yield client, client.get(f"/experiments/{experiment['id']}").json()


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def accuracy_of(predictions: list[dict], labels: np.ndarray) -> float:
    return float(
        np.mean([p["label"] == label for p, label in zip(predictions, labels, strict=True)])
    )


def test_png_uploads_reach_the_reported_test_accuracy(trained, dataset):
    client, experiment = trained
    predictions = []
    for image in dataset.test_images[:SAMPLE]:
        response = client.post(
            "/predict",
            params={"experiment_id": experiment["id"]},
            files={"image": ("garment.png", png_bytes(image), "image/png")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["experiment_id"] == experiment["id"]
        assert body["model_selection"] == "requested"
        predictions.extend(body["predictions"])
    first = predictions[0]
    assert len(first["probabilities"]) == 10
    assert abs(sum(first["probabilities"]) - 1) < 1e-3
    assert first["confidence"] == max(first["probabilities"])
    assert accuracy_of(predictions, dataset.test_labels[:SAMPLE]) == pytest.approx(
        experiment["test"]["accuracy"], abs=0.06
    )


def test_json_arrays_of_ints_and_floats_give_the_same_answers(trained, dataset):
    client, experiment = trained
    images = dataset.test_images[:SAMPLE]
    as_ints = client.post("/predict", json={"instances": images.tolist()}).json()
    as_floats = client.post("/predict", json={"instances": (images / 255.0).tolist()}).json()
    assert as_ints["model_selection"] == "latest_succeeded"
    assert as_ints["experiment_id"] == experiment["id"]
    assert [p["label"] for p in as_ints["predictions"]] == [
        p["label"] for p in as_floats["predictions"]
    ]
    assert accuracy_of(as_ints["predictions"], dataset.test_labels[:SAMPLE]) == pytest.approx(
        experiment["test"]["accuracy"], abs=0.06
    )


def test_base64_images_match_the_png_upload(trained, dataset):
    client, _ = trained
    images = dataset.test_images[:20]
    instances = [{"b64": base64.b64encode(png_bytes(image)).decode()} for image in images]
    by_b64 = client.post("/predict", json={"instances": instances}).json()["predictions"]
    by_array = client.post("/predict", json={"instances": images.tolist()}).json()["predictions"]
    assert [p["label"] for p in by_b64] == [p["label"] for p in by_array]


def test_dark_on_light_photo_is_inverted_and_resized(trained, dataset):
    client, _ = trained
    image = dataset.test_images[0]
    # A larger, RGB, dark-on-light rendering of the same garment, as a phone photo would be.
    photo = Image.fromarray(255 - image).resize((112, 112), Image.Resampling.NEAREST).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=95)
    upload = {"image": ("photo.jpg", buffer.getvalue(), "image/jpeg")}
    original = client.post("/predict", json={"instances": [image.tolist()]}).json()
    photo_answer = client.post("/predict", files=upload).json()
    assert photo_answer["predictions"][0]["label"] == original["predictions"][0]["label"]
    not_inverted = client.post("/predict", params={"invert": "false"}, files=upload).json()
    assert (
        not_inverted["predictions"][0]["probabilities"]
        != photo_answer["predictions"][0]["probabilities"]
    )


def test_raw_image_body_is_accepted(trained, dataset):
    client, _ = trained
    response = client.post(
        "/predict", content=png_bytes(dataset.test_images[1]), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (
            {"files": {"image": ("x.png", b"definitely not an image", "image/png")}},
            422,
            "cannot decode",
        ),
        ({"files": {"picture": ("x.png", b"x", "image/png")}}, 422, "field named 'image'"),
        ({"json": {"instances": [[[0] * 27] * 28]}}, 422, "shape [28, 27]"),
        ({"json": {"instances": [[[300] * 28] * 28]}}, 422, "between 0 and 255"),
        ({"json": {"instances": [[[1.5] * 28] * 28]}}, 422, "between 0 and 1"),
        ({"json": {"instances": [{"b64": "%%%"}]}}, 422, "not valid base64"),
        ({"json": {"instances": [{"url": "x"}]}}, 422, '{"b64": "<base64 image>"}'),
        ({"json": {"images": []}}, 422, '{"instances": [...]}'),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
        (
            {
                "content": b'{"instances": [' + b"7" * 5000 + b"]}",
                "headers": {"content-type": "application/json"},
            },
            422,
            "a number with too many digits",
        ),
        (
            {
                "content": b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                "headers": {"content-type": "application/json"},
            },
            422,
            "nested too deeply",
        ),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "'text/plain'"),
        ({"json": {"instances": [[[0] * 28] * 28] * 300}}, 413, "over the limit of 256"),
        (
            {"files": {"image": ("big.png", b"0" * 2_100_000, "image/png")}},
            413,
            "over the 2,000,000",
        ),
    ],
)
def test_bad_inputs_get_clear_errors(trained, kwargs, status, message):
    client, _ = trained
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_an_undecodable_upload_is_described_in_our_words(trained):
    client, _ = trained
    response = client.post("/predict", content=b"GIF89a?", headers={"content-type": "image/gif"})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "instance 0: cannot decode the upload as an image: no format we read recognizes it; "
        "send a PNG or JPEG"
    )


def test_a_body_without_a_declared_length_is_cut_off_at_the_limit(trained):
    """A chunked upload declares no length: reading stops with a 413 once it passes the limit."""
    client, _ = trained
    limit = client.app.state.settings.max_upload_bytes
    chunks = iter([b"\x89PNG" + b"0" * 1024 * 1024] * (limit // (1024 * 1024) + 2))
    response = client.post("/predict", content=chunks, headers={"content-type": "image/png"})
    assert response.status_code == 413, response.text
    assert f"over the {limit:,}-byte limit" in response.json()["detail"]


def test_image_with_too_many_pixels_is_413_before_decoding(trained):
    client, _ = trained
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")  # Compresses to a few kB.
    response = client.post(
        "/predict", files={"image": ("bomb.png", buffer.getvalue(), "image/png")}
    )
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


def test_small_pictures_decode_on_the_event_loop_and_large_ones_in_a_thread(
    trained, dataset, monkeypatch
):
    """Where decoding runs follows the pixels the header announces, not the size of the file."""
    client, _ = trained
    sent_to_threads: list[str] = []

    async def recording_run_in_threadpool(function, *args):
        sent_to_threads.append(function.__name__)
        return function(*args)

    monkeypatch.setattr(image_batches, "run_in_threadpool", recording_run_in_threadpool)

    def threads_used(data: bytes) -> list[str]:
        sent_to_threads.clear()
        response = client.post("/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        return [name for name in sent_to_threads if name != "resolve"]

    assert threads_used(png_bytes(dataset.test_images[0])) == []
    # 96 bytes, but padded to a 2,000×2,000 square before it is resized.
    buffer = io.BytesIO()
    Image.new("L", (1, 2000)).save(buffer, format="PNG")
    assert threads_used(buffer.getvalue()) == ["_to_batch"]
    # Reading a large file's header is work too: a 28×28 picture with 8 kB of metadata.
    buffer = io.BytesIO()
    Image.fromarray(dataset.test_images[0]).save(buffer, format="PNG", pnginfo=large_text())
    assert threads_used(buffer.getvalue()) == ["_decode_all"]


def large_text() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 8192)
    return info


def test_content_type_and_empty_body_are_checked_before_any_model_look_up(client):
    """No experiment has a model here: a look-up would answer 409."""
    text = client.post("/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    for content_type in ("image/png", "application/json", "multipart/form-data; boundary=x"):
        empty = client.post("/predict", content=b"", headers={"content-type": content_type})
        assert empty.status_code == 422, content_type
        assert "the body is empty" in empty.json()["detail"]


@pytest.mark.parametrize("experiment_id", [0, -1, 2**31, 2**63, 2**64])
def test_experiment_ids_outside_the_database_range_are_422(client, experiment_id):
    response = client.post(
        "/predict", params={"experiment_id": experiment_id}, json={"instances": [[[0] * 28] * 28]}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "experiment_id"]


def test_openapi_documents_the_predict_body_and_its_errors():
    document = create_app(Settings(database_url="sqlite:///unused.db", _env_file=None)).openapi()
    operation = document["paths"]["/predict"]["post"]
    content = operation["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"] == {
        "type": "string",
        "format": "binary",
    }
    assert content["application/json"]["schema"]["required"] == ["instances"]
    assert content["image/*"]["schema"]["format"] == "binary"
    assert {"401", "404", "409", "413", "415", "422", "503"} <= set(operation["responses"])
    (experiment_id,) = [p for p in operation["parameters"] if p["name"] == "experiment_id"]
    assert experiment_id["schema"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**31 - 1,
    }


def test_unknown_and_unfinished_experiments(trained):
    client, _ = trained
    assert (
        client.post("/predict", params={"experiment_id": 999}, json={"instances": []}).status_code
        == 404
    )
    queued = client.post("/experiments", json={"conv_layers": 1, "device": "gpu"}).json()
    response = client.post(
        "/predict", params={"experiment_id": queued["id"]}, json={"instances": [[[0] * 28] * 28]}
    )
    assert response.status_code == 409
    assert "is queued, not succeeded" in response.json()["detail"]


def test_no_trained_model_at_all_is_409(client):
    response = client.post("/predict", json={"instances": [[[0] * 28] * 28]})
    assert response.status_code == 409
    assert "no experiment has finished training" in response.json()["detail"]


def test_model_download_is_the_stored_keras_file(trained):
    client, experiment = trained
    response = client.get(f"/experiments/{experiment['id']}/model")
    assert response.status_code == 200
    assert response.content[:2] == b"PK"
    assert len(response.content) == experiment["model"]["size_bytes"]


def test_concurrent_clients_over_http_share_model_calls(trained, predict_database, dataset):
    """A real API process: requests that arrive while the model is busy join its next call."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "api"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": predict_database, "PORT": str(port)},
    )
    uploads = [png_bytes(image) for image in dataset.test_images[:64]]

    def client(offset: int) -> list[int]:
        batch_sizes = []
        with httpx.Client(base_url=base, timeout=30) as http:
            for index in range(offset, offset + 30):
                image = uploads[index % len(uploads)]
                response = http.post("/predict", files={"image": ("x.png", image, "image/png")})
                assert response.status_code == 200, response.text
                timing = response.headers["server-timing"]
                batch_sizes.append(int(re.search(r'desc="batch of (\d+)"', timing).group(1)))
        return batch_sizes

    try:
        wait_for_api(base, process)
        with ThreadPoolExecutor(16) as pool:
            batch_sizes = [size for sizes in pool.map(client, range(16)) for size in sizes]
    finally:
        process.terminate()
        process.wait(30)
    assert len(batch_sizes) == 16 * 30
    # Arrivals during a model call wait for the next one and share it; before, each request
    # that found nobody else in flight was sent alone, and the median request ran alone.
    assert statistics.median(batch_sizes) > 1, sorted(batch_sizes)


def test_many_small_files_announcing_large_images_are_refused_together(trained):
    client, experiment = trained
    buffer = io.BytesIO()
    Image.new("1", (1500, 1500)).save(buffer, format="TIFF", compression="group4")
    # Each is under this client's 4,000,000-pixel limit; 64 of them add up to 144 million.
    instance = {"b64": base64.b64encode(buffer.getvalue()).decode()}
    response = client.post(
        "/predict",
        params={"experiment_id": experiment["id"]},
        json={"instances": [instance] * 64},
    )
    assert response.status_code == 413
    assert "the images add up to 144,000,000 pixels" in response.json()["detail"]
    single = client.post(
        "/predict", params={"experiment_id": experiment["id"]}, json={"instances": [instance]}
    )
    assert single.status_code == 200


def test_a_multipart_body_of_many_tiny_parts_is_refused(trained):
    client, experiment = trained
    boundary = "b"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
    body = (part * 1000 + f"--{boundary}--\r\n").encode()
    response = client.post(
        "/predict",
        params={"experiment_id": experiment["id"]},
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 422
    assert "more than 16 parts" in response.json()["detail"]
