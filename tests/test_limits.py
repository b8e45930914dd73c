"""Bad input gets a clear 4xx and stores nothing: huge ids, odd numbers, big or deep bodies."""

import json

import pytest

from tests.conftest import SQLITE_ONLY, TINY_SPEC

pytestmark = SQLITE_ONLY

HUGE_IDS = ["9223372036854775808", "2147483648", "99999999999999999999", "0", "-1"]


@pytest.mark.parametrize("huge", HUGE_IDS)
def test_ids_out_of_range_are_422_on_every_path_and_query(client, huge):
    for method, path in [
        ("GET", f"/experiments/{huge}"),
        ("POST", f"/experiments/{huge}/cancel"),
        ("GET", f"/experiments/{huge}/model"),
        ("GET", f"/experiments/{huge}/learning-curve.png"),
        ("GET", f"/experiments?offset={huge}" if huge[0] != "0" else "/experiments?limit=0"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 422, (method, path, response.text)


def test_the_largest_id_is_a_plain_404(client):
    assert client.get("/experiments/2147483647").status_code == 404


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", True),
        ("epochs", "2"),
        ("filters", 8.0),
        ("learning_rate", "0.01"),
        ("stop", {"metric": "loss", "threshold": float("nan")}),
        ("stop", {"metric": "loss", "threshold": float("inf")}),
        ("stop", {"metric": "loss", "threshold": float("-inf")}),
    ],
)
def test_non_integers_and_non_finite_numbers_are_refused(client, field, value):
    body = json.dumps({**TINY_SPEC, field: value})  # json writes NaN and Infinity as such.
    response = client.post(
        "/experiments", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert client.get("/experiments").json()["total"] == 0


def test_a_number_too_large_for_a_double_is_refused(client):
    body = json.dumps(TINY_SPEC)[:-1] + ', "stop": {"metric": "loss", "threshold": 1e309}}'
    response = client.post(
        "/experiments", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        '{"epochs": ' + "9" * 5000 + "}",
        "[" * 30_000 + "]" * 30_000,
        '{"name": "' + "x" * 70_000 + '"}',
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["5000-digit number", "30000 deep", "70 kB", "100000 deep"],
)
def test_hostile_json_bodies_are_4xx(client, body):
    response = client.post(
        "/experiments", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert client.get("/experiments").json()["total"] == 0


def test_a_body_that_is_not_utf8_json_says_so(client):
    response = client.post(
        "/experiments", content=b"\xff&y", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("the body cannot be read as JSON: ")


def test_bodies_over_the_limit_are_413_before_they_are_read(client):
    declared = client.post(
        "/experiments",
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": "100000000"},
    )
    assert declared.status_code == 413 and "65,536-byte limit" in declared.json()["detail"]

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    chunked = client.post(
        "/experiments", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413


def test_a_422_does_not_echo_a_large_input(client):
    response = client.post("/experiments", json={**TINY_SPEC, "dense_units": "u" * 5000})
    assert response.status_code == 422
    assert len(response.text) < 1000
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "dense_units"] and "input" not in error


def test_training_steps_over_the_limit_are_422_with_the_number(client):
    response = client.post("/experiments", json={"epochs": 500, "batch_size": 1, "conv_layers": 1})
    assert response.status_code == 422
    assert "30,000,000 training steps" in response.json()["detail"]
    assert "MAX_TRAINING_STEPS" in response.json()["detail"]


def test_method_not_allowed_lists_every_method_of_the_path(client):
    response = client.request("OPTIONS", "/experiments")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert client.delete("/experiments/1").headers["allow"] == "GET"


def test_a_lone_surrogate_in_a_field_or_key_is_a_422_not_a_500(client):
    for body in ('{"epochs": "\\ud800"}', '{"\\ud800": 1}', '{"stop": {"metric": "\\udfff"}}'):
        response = client.post(
            "/experiments", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, (body, response.text)
