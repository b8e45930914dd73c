"""Studies through the API: one POST queues every cell exactly once, the GET compares them."""

import csv
import io
import json
import statistics
import threading

import pytest
from fastapi.testclient import TestClient
from scipy import stats

from service.api import create_app
from service.studies.request import MAX_STUDY_EXPERIMENTS
from tests.conftest import TINY_SPEC
from tests.test_worker import start_worker

BASE = {key: value for key, value in TINY_SPEC.items() if key != "seed"}
GRID_STUDY = {
    "name": "filters and depth",
    "base": {**BASE, "epochs": 2, "train_samples": 128},
    "grid": {"filters": [4, 8], "conv_layers": [1, 2]},
    "repeats": 2,
}


def counts(client) -> tuple[int, int]:
    studies = client.get("/studies").json()["total"]
    return studies, client.get("/experiments").json()["total"]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        # Three conv layers of 9×9 kernels with pooling leave nothing for the third.
        (
            {"base": {"kernel_size": 9}, "grid": {"conv_layers": [1, 3]}},
            ['cell {"conv_layers":3} on auto', "conv_3 has a 9x9 kernel"],
        ),
        ({"variants": [{"filters": 8}, {"filters": 0}]}, ['cell {"filters":0}', "filters"]),
        ({"grid": {"epochs": [1, 1000]}}, ['cell {"epochs":1000}', "epochs"]),
        ({"grid": {"seed": [1, 2]}}, ["grid: 'seed' cannot be set here", "seed_base"]),
        ({"grid": {"bogus": [1]}}, ["grid: 'bogus' cannot be set here", "conv_layers"]),
        ({"variants": [{"device": "gpu"}]}, ["variants[0]: 'device'", "`devices`"]),
        ({"devices": ["cpu", "cpu"]}, ["devices lists a device twice"]),
        (
            {"variants": [{"filters": 16}], "grid": {"filters": [32, 64]}},
            ["variants[0] sets filters, which the grid varies"],
        ),
        ({"grid": {"filters": [8, 8]}}, ['cell {"filters":8} on auto', "appears twice"]),
        ({"repeats": 11}, ["repeats"]),
        (
            {"grid": {"filters": list(range(1, 51)), "epochs": [1, 2]}, "repeats": 6},
            ["600 experiments", f"limit of {MAX_STUDY_EXPERIMENTS}"],
        ),
        (
            {"prune": {"metric": "val_accuracy"}},
            ["prune.metric 'val_accuracy' needs validation data"],
        ),
    ],
)
def test_a_bad_cell_is_a_422_naming_it_and_nothing_is_created(client, body, names):
    before = counts(client)
    response = client.post("/studies", json={"name": "bad", **body})
    assert response.status_code == 422, response.text
    detail = str(response.json()["detail"])
    for name in names:
        assert name in detail
    assert counts(client) == before


def test_a_cell_over_the_step_limit_is_refused_by_name(client):
    body = {"name": "long", "grid": {"epochs": [1, 400]}, "base": {"batch_size": 1}}
    response = client.post("/studies", json=body)
    assert response.status_code == 422
    assert 'cell {"epochs":400}' in response.json()["detail"]
    assert "MAX_TRAINING_STEPS" in response.json()["detail"]
    assert counts(client) == (0, 0)


def test_cells_are_the_product_of_variants_grid_repeats_and_devices(client):
    body = {
        "name": "crossed",
        "base": {**BASE, "filters": 16},
        "variants": [{"conv_layers": 1}, {"conv_layers": 2, "dense_units": [16]}],
        "grid": {"batch_size": [32, 64]},
        "repeats": 2,
        "seed_base": 7,
        "devices": ["cpu", "gpu"],
    }
    response = client.post("/studies", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/studies/{response.json()['id']}"
    listed = client.get(f"/experiments?study_id={response.json()['id']}&limit=100").json()
    assert listed["total"] == 2 * 2 * 2 * 2
    cells = {
        (json.dumps(item["variant"], sort_keys=True), item["repeat"]) for item in listed["items"]
    }
    assert len(cells) == 8  # variant × repeat, on each of two devices
    one = client.get(f"/experiments/{listed['items'][0]['id']}").json()
    # A variant names every varied field, the base's value where the variant left it out.
    assert set(one["study"]["variant"]) == {"conv_layers", "dense_units", "batch_size"}
    specs = [client.get(f"/experiments/{item['id']}").json() for item in listed["items"]]
    assert sorted({s["spec"]["seed"] for s in specs}) == [7, 8]
    assert {s["spec"]["device"] for s in specs} == {"cpu", "gpu"}
    assert all(s["spec"]["conv_layers"][0]["filters"] == 16 for s in specs)
    first_dense = {(len(s["spec"]["conv_layers"]), tuple(s["spec"]["dense_units"])) for s in specs}
    assert first_dense == {(1, (32,)), (2, (16,))}
    study = client.get(f"/studies/{response.json()['id']}").json()
    assert study["status"] == "queued"
    assert study["counts"]["queued"] == 16


def test_a_retried_post_with_its_idempotency_key_returns_the_same_study(client):
    headers = {"Idempotency-Key": "filters-and-depth-1"}
    first = client.post("/studies", json=GRID_STUDY, headers=headers)
    again = client.post("/studies", json=GRID_STUDY, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert counts(client) == (1, 8)
    changed = client.post("/studies", json={**GRID_STUDY, "repeats": 3}, headers=headers)
    assert changed.status_code == 409
    assert "different body" in changed.json()["detail"]
    assert counts(client) == (1, 8)


def test_racing_posts_with_one_key_make_one_study(client):
    headers = {"Idempotency-Key": "raced"}
    answers = []

    def post() -> None:
        answers.append(client.post("/studies", json=GRID_STUDY, headers=headers))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert counts(client) == (1, 8)


def test_the_list_gives_each_study_its_own_counts_newest_first(client):
    first = client.post("/studies", json=GRID_STUDY).json()
    second = client.post("/studies", json={**GRID_STUDY, "name": "second"}).json()
    client.post(f"/studies/{first['id']}/cancel")
    newest, oldest = client.get("/studies").json()["items"]
    assert (newest["id"], oldest["id"]) == (second["id"], first["id"])
    assert (newest["status"], newest["counts"]["queued"], newest["counts"]["cancelled"]) == (
        "queued",
        8,
        0,
    )
    assert (oldest["status"], oldest["counts"]["queued"], oldest["counts"]["cancelled"]) == (
        "cancelled",
        0,
        8,
    )
    assert newest["experiments"] == oldest["experiments"] == 8


def test_a_study_over_the_queue_limit_is_refused_whole(settings):
    with TestClient(create_app(settings.model_copy(update={"max_queued": 10}))) as client:
        for _ in range(3):
            client.post("/experiments", json=TINY_SPEC)
        response = client.post("/studies", json=GRID_STUDY)
        assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
        assert "3 of your experiments" in response.json()["detail"]
        assert "this request adds 8" in response.json()["detail"]
        assert counts(client) == (0, 3)


def test_a_study_that_could_never_fit_the_queue_limit_is_a_422_not_a_429(settings):
    with TestClient(create_app(settings.model_copy(update={"max_queued": 7}))) as client:
        response = client.post("/studies", json=GRID_STUDY)
        assert response.status_code == 422
        assert "8 experiments, more than the 7" in response.json()["detail"]
        assert counts(client) == (0, 0)


def test_cancel_cancels_every_queued_experiment_and_then_is_a_409(client):
    study = client.post("/studies", json=GRID_STUDY).json()
    other = client.post("/experiments", json=TINY_SPEC).json()
    cancelled = client.post(f"/studies/{study['id']}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert body["counts"]["cancelled"] == 8 and body["counts"]["queued"] == 0
    assert client.get(f"/experiments/{other['id']}").json()["status"] == "queued"
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 409
    assert client.post("/studies/999/cancel").status_code == 404


def test_a_study_runs_each_cell_once_with_two_workers_and_compares_them(client):
    """The acceptance test: a 2×2 grid × 2 repeats, POSTed twice, raced by two workers."""
    headers = {"Idempotency-Key": "acceptance"}
    study = client.post("/studies", json=GRID_STUDY, headers=headers).json()
    assert client.post("/studies", json=GRID_STUDY, headers=headers).json()["id"] == study["id"]
    workers = [start_worker(client.app.state.settings, "--drain") for _ in range(2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

    listed = client.get(f"/experiments?study_id={study['id']}&limit=100").json()["items"]
    assert len(listed) == 8
    bodies = [client.get(f"/experiments/{item['id']}").json() for item in listed]
    assert all(b["status"] == "succeeded" and len(b["attempts"]) == 1 for b in bodies)
    cells = {
        (json.dumps(b["study"]["variant"], sort_keys=True), b["study"]["repeat"]) for b in bodies
    }
    assert len(cells) == 8

    read = client.get(f"/studies/{study['id']}").json()
    assert read["status"] == "finished" and read["counts"]["succeeded"] == 8
    assert len(read["variants"]) == 4
    for variant in read["variants"]:
        accuracies = [
            b["test"]["accuracy"] for b in bodies if b["study"]["variant"] == variant["params"]
        ]
        assert variant["runs"] == 2
        check_estimate(variant["test_accuracy"], accuracies)

    check_csv(client, study["id"], bodies)
    png = client.get(f"/studies/{study['id']}/learning-curves.png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read["effects"]) == 2  # filters 4 → 8, conv_layers 1 → 2


def check_estimate(estimate: dict, values: list[float]) -> None:
    """Mean, sample std and the Student t interval, recomputed here from the raw values."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    half = stats.t.ppf(0.975, len(values) - 1) * std / len(values) ** 0.5
    assert estimate["mean"] == pytest.approx(mean)
    assert estimate["std"] == pytest.approx(std)
    assert estimate["ci_low"] == pytest.approx(mean - half)
    assert estimate["ci_high"] == pytest.approx(mean + half)


def check_csv(client, study_id: int, bodies: list[dict]) -> None:
    response = client.get(f"/studies/{study_id}?format=csv")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 8
    by_id = {b["id"]: b for b in bodies}
    for row in rows:
        body = by_id[int(row["experiment_id"])]
        assert float(row["test_accuracy"]) == pytest.approx(body["test"]["accuracy"])
        assert int(row["filters"]) == body["study"]["variant"]["filters"]
        assert int(row["epochs_run"]) == len(body["epochs"])
        assert float(row["training_seconds"]) == pytest.approx(
            sum(e["seconds"] for e in body["epochs"])
        )
    assert statistics.fmean(float(r["test_accuracy"]) for r in rows) > 0.1
