"""The README's claim that the model code runs on JAX too: a whole cycle under KERAS_BACKEND=jax.

A worker trains, evaluates and stores a model; an API process loads it and classifies test
images with it; both on JAX, as a machine without TensorFlow runs them. `make test` installs
the JAX CPU wheel, so a missing JAX fails here rather than passing unseen.
"""

import io
import os
import subprocess
import sys

import httpx2 as httpx
import numpy as np
from PIL import Image

from tests.conftest import ROOT, SQLITE_ONLY, TINY_SPEC, api_process


@SQLITE_ONLY
def test_jax_trains_evaluates_saves_loads_and_predicts(settings, tmp_path, dataset):
    jax = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    with (
        api_process(settings.database_url, tmp_path / "api.log", **jax) as base,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        spec = {**TINY_SPEC, "train_samples": 2000}
        # Twice, with one seed: the child trains the second as it trained the first.
        created, again = (http.post("/experiments", json=spec).json() for _ in range(2))
        worker = subprocess.run(
            [sys.executable, "-m", "service", "worker", "--device", "cpu", "--drain"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": settings.database_url, **jax},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr

        body = http.get(f"/experiments/{created['id']}").json()
        assert body["status"] == "succeeded", body
        assert body["backend"] == "jax"
        record = body["reproducibility"]
        assert (record["backend"], record["seed"], record["deterministic"]) == ("jax", 1, True)
        assert record["backend_version"][0].isdigit()
        assert len(body["epochs"]) == 2 and body["test"]["accuracy"] > 0.5
        repeated = http.get(f"/experiments/{again['id']}").json()
        losses = [[epoch["loss"] for epoch in run["epochs"]] for run in (body, repeated)]
        assert losses[0] == losses[1]

        images = dataset.test_images[:20]
        labels = dataset.test_labels[:20]
        predicted = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            response = http.post(
                "/predict",
                params={"experiment_id": created["id"]},
                content=buffer.getvalue(),
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
            predicted.append(response.json()["predictions"][0]["label"])
        # A model that loaded wrong answers at chance, about 2 of 20.
        assert np.mean(np.array(predicted) == labels) >= 0.5
