"""Listing, inspecting and plotting experiments; errors users can act on."""

import io
import sqlite3
import time

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.engine import make_url

from service import queue, registry
from service.api import create_app
from service.models import Experiment, ExperimentStatus
from service.spec import ExperimentCreate
from tests.conftest import SQLITE_ONLY, submit


def test_list_is_newest_first_paginated_and_filtered(client, drain):
    first = submit(client, name="one")
    drain()
    second = submit(client, name="two", conv_layers=2, filters=4)
    third = submit(client, name="three", device="gpu")

    page = client.get("/experiments", params={"limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [item["id"] for item in page["items"]] == [third["id"], second["id"]]
    rest = client.get("/experiments", params={"limit": 2, "offset": 2}).json()
    assert [item["id"] for item in rest["items"]] == [first["id"]]

    finished = client.get("/experiments", params={"status": "succeeded"}).json()
    [row] = finished["items"]
    assert row["name"] == "one" and row["status"] == "succeeded"
    assert row["conv_layers"] == 1 and row["filters"] == [8]
    assert row["epochs_run"] == 2 and row["seconds_per_epoch"] > 0
    assert 0 < row["final_accuracy"] <= 1 and 0 < row["test_accuracy"] <= 1
    detail = client.get(f"/experiments/{first['id']}").json()
    assert row["total_params"] == detail["summary"]["total_params"]
    assert row["final_accuracy"] == detail["epochs"][-1]["accuracy"]

    queued = client.get("/experiments", params={"status": "queued"}).json()
    assert [item["filters"] for item in queued["items"]] == [[8], [4, 4]]


def test_bad_list_parameters_are_422(client):
    assert client.get("/experiments", params={"status": "done"}).status_code == 422
    assert client.get("/experiments", params={"limit": 1000}).status_code == 422


def test_unknown_experiment_is_404_everywhere(client):
    for path in ("/experiments/42", "/experiments/42/model", "/experiments/42/learning-curve.png"):
        response = client.get(path)
        assert response.status_code == 404
        assert "experiment 42 does not exist" in response.json()["detail"]


def test_queued_experiment_says_where_it_stands_and_why_it_waits(client, session_factory):
    first = submit(client)
    second = submit(client)
    gpu = submit(client, device="gpu")
    body = client.get(f"/experiments/{second['id']}").json()
    assert body["queue_position"] == 2
    assert body["waiting_reason"] == "no worker is alive: start one with `python -m service worker`"
    assert body["test"] is None and body["model"] is None and body["epochs"] == []
    assert body["attempts"] == [] and body["cancel_requested"] is False
    assert client.get(f"/experiments/{second['id']}/model").status_code == 409
    assert client.get(f"/experiments/{second['id']}/learning-curve.png").status_code == 409
    assert client.get(f"/experiments/{second['id']}/confusion-matrix.png").status_code == 409
    assert client.get(f"/experiments/{second['id']}/misclassified").status_code == 409
    assert client.get(f"/experiments/{second['id']}/misclassified.png").status_code == 409

    registry.register_worker(
        session_factory, worker_id="cpu-1", host="here", pid=1, device="cpu", lease_seconds=30
    )
    reasons = [
        client.get(f"/experiments/{e['id']}").json()["waiting_reason"] for e in (first, second, gpu)
    ]
    assert reasons == [
        "next in line: the first free worker takes it",
        "1 queued experiment(s) ahead of it",
        "no worker with a GPU is alive: start one with `python -m service worker --device gpu`",
    ]


def test_the_202_body_is_the_view_a_get_returns(client):
    first = submit(client)
    second = submit(client, conv_layers=1, filters=4, device="gpu")
    for created in (first, second):
        assert created == client.get(f"/experiments/{created['id']}").json()
    assert (first["queue_position"], second["queue_position"]) == (1, 2)


def test_a_row_stored_before_newer_spec_fields_still_reads(client, session_factory):
    """An older version stored the spec with the fields it knew; the rest take their defaults."""
    with session_factory.begin() as session:
        old = Experiment(
            name="old",
            status=ExperimentStatus.QUEUED,
            spec={
                "conv_layers": [{"filters": 8, "kernel_size": 3, "pool_size": 2}],
                "dense_units": [16],
                "epochs": 2,
                "batch_size": 64,
                "learning_rate": 0.01,
            },
            summary=ExperimentCreate(conv_layers=1, filters=8, dense_units=[16], batch_size=64)
            .to_spec()
            .summary()
            .as_dict(),
            requested_device="auto",
        )
        session.add(old)
        session.flush()
        old_id = old.id

    body = client.get(f"/experiments/{old_id}").json()
    assert body["spec"]["epochs"] == 2 and body["spec"]["learning_rate"] == 0.01
    assert body["spec"]["validation_split"] == 0.0 and body["spec"]["stop"] is None
    assert body["spec"]["device"] == "auto" and body["spec"]["train_samples"] is None
    [row] = client.get("/experiments").json()["items"]
    assert (row["filters"], row["dense_units"]) == ([8], [16])


def test_workers_are_listed_with_their_experiment_and_liveness(client, session_factory):
    submit(client)
    for worker_id in ("old", "new"):
        registry.register_worker(
            session_factory, worker_id=worker_id, host="here", pid=7, device="cpu", lease_seconds=30
        )
    registry.unregister_worker(session_factory, "old")
    taken = queue.claim_next_experiment(session_factory, worker_id="new", worker_device="cpu")
    workers = client.get("/workers").json()
    assert [(w["id"], w["alive"], w["experiment_id"]) for w in workers] == [
        ("new", True, taken.experiment_id),
        ("old", False, None),
    ]
    assert workers[1]["stopped_at"] is not None
    body = client.get(f"/experiments/{taken.experiment_id}").json()
    assert [(a["number"], a["worker_id"], a["outcome"]) for a in body["attempts"]] == [
        (1, "new", None)
    ]


def test_cancel_queued_at_once_and_finished_is_409(client, session_factory):
    created = submit(client)
    response = client.post(f"/experiments/{created['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] and body["cancel_requested"]
    again = client.post(f"/experiments/{created['id']}/cancel")
    assert again.status_code == 409
    assert "is cancelled: only queued or running experiments can be cancelled" in again.text
    assert queue.claim_next_experiment(session_factory, worker_id="w", worker_device="cpu") is None
    assert client.post("/experiments/999/cancel").status_code == 404


def test_cancel_running_is_202_and_a_request_to_its_worker(client, session_factory):
    created = submit(client)
    queue.claim_next_experiment(session_factory, worker_id="w", worker_device="cpu")
    response = client.post(f"/experiments/{created['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]


def test_a_finished_run_plots_its_curve_confusion_and_misclassified_images(client, drain, dataset):
    created = submit(client, validation_split=0.2)
    drain()
    response = client.get(f"/experiments/{created['id']}/learning-curve.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (1000, 400)

    # The same run, evaluated class by class on the 10,000 test images.
    test = client.get(f"/experiments/{created['id']}").json()["test"]
    matrix = test["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == 10_000
    assert sum(matrix[i][i] for i in range(10)) / 10_000 == test["accuracy"]
    assert [row["name"] for row in test["per_class"]][:2] == ["T-shirt/top", "Trouser"]
    trouser = test["per_class"][1]
    assert trouser["recall"] == matrix[1][1] / sum(matrix[1])
    heat_map = client.get(f"/experiments/{created['id']}/confusion-matrix.png")
    assert heat_map.status_code == 200 and heat_map.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heat_map.content)).size == (800, 700)

    # The images it got wrong, by test index.
    misclassified = f"/experiments/{created['id']}/misclassified"
    wrong = client.get(misclassified).json()
    assert wrong["experiment_id"] == created["id"]
    assert wrong["total_misclassified"] == round(10_000 - test["accuracy"] * 10_000)
    items = wrong["items"]
    assert len(items) == min(25, wrong["total_misclassified"])
    indices = [item["index"] for item in items]
    assert indices == sorted(set(indices)) and indices[-1] < 10_000
    for item in items:
        assert item["true_label"] != item["predicted_label"]
        assert item["true_label"] == dataset.test_labels[item["index"]]
        assert item["true_class"] == test["per_class"][item["true_label"]]["name"]
        assert item["predicted_class"] == test["per_class"][item["predicted_label"]]["name"]
    most = client.get(misclassified, params={"limit": 100}).json()["items"]
    assert most[:25] == items and len(most) == min(100, wrong["total_misclassified"])
    for limit in (0, 101):
        assert client.get(misclassified, params={"limit": limit}).status_code == 422
        assert client.get(f"{misclassified}.png", params={"limit": limit}).status_code == 422
    grid = client.get(f"{misclassified}.png", params={"limit": 9})
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert grid.content.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = Image.open(io.BytesIO(grid.content)).size
    assert 300 <= width <= 1000 and 300 <= height <= 1000


@SQLITE_ONLY
def test_locked_database_is_503_with_retry_after_and_loses_nothing(settings):
    impatient = settings.model_copy(update={"sqlite_busy_timeout_seconds": 0.2})
    with TestClient(create_app(impatient)) as client:
        created = submit(client)
        blocker = sqlite3.connect(make_url(settings.database_url).database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = client.post("/experiments", json={"conv_layers": 1})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert "database is unavailable" in response.json()["detail"]
        assert "locked" not in response.json()["detail"]  # The driver's words stay in the log.
        assert client.get("/experiments").json()["total"] == 1
        assert client.get(f"/experiments/{created['id']}").json()["status"] == "queued"


def test_health_counts_live_workers_without_a_key(settings, session_factory):
    keyed = settings.model_copy(update={"api_keys": ["k" * 20]})

    def wait_for_health(expected: dict) -> None:
        deadline = time.monotonic() + 10
        while (body := client.get("/health").json()) != expected:
            assert time.monotonic() < deadline, body
            time.sleep(0.1)

    with TestClient(create_app(keyed)) as client:
        wait_for_health({"status": "ok", "workers_alive": 0})
        registry.register_worker(
            session_factory, worker_id="w", host="here", pid=1, device="cpu", lease_seconds=30
        )
        wait_for_health({"status": "ok", "workers_alive": 1})
