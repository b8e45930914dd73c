"""Spec validation and normalization, through the API as users meet them."""

import pytest

from service.spec import ExperimentCreate, StopRule


def test_count_form_spells_out_every_layer_with_defaults():
    spec = ExperimentCreate(conv_layers=2, filters=16).to_spec()
    assert [layer.model_dump() for layer in spec.conv_layers] == [
        {"filters": 16, "kernel_size": 3, "pool_size": 2},
        {"filters": 16, "kernel_size": 3, "pool_size": 2},
    ]
    assert spec.dense_units == [128]
    assert (spec.epochs, spec.batch_size, spec.learning_rate) == (5, 32, 0.001)
    assert spec.device == "auto"


def test_list_form_takes_top_level_defaults_and_null_pool_means_none():
    spec = ExperimentCreate(
        conv_layers=[{"filters": 64, "pool_size": None}, {"kernel_size": 5}], filters=8
    ).to_spec()
    assert [layer.model_dump() for layer in spec.conv_layers] == [
        {"filters": 64, "kernel_size": 3, "pool_size": 0},
        {"filters": 8, "kernel_size": 5, "pool_size": 2},
    ]


@pytest.mark.parametrize(
    ("metric", "value", "reached"),
    [
        ("loss", 0.29, True),
        ("loss", 0.31, False),
        ("val_accuracy", 0.9, True),
        ("accuracy", 0.8, False),
    ],
)
def test_stop_rule_compares_losses_downwards_and_accuracies_upwards(metric, value, reached):
    assert (
        StopRule(metric=metric, threshold=0.3 if "loss" in metric else 0.9).reached(value)
        is reached
    )


def test_post_stores_the_normalized_full_spec_and_summary(client):
    response = client.post(
        "/experiments", json={"name": "2 conv 32", "conv_layers": 2, "filters": 32, "epochs": 5}
    )
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/experiments/{body['id']}"
    assert body["status"] == "queued"
    assert body["spec"]["conv_layers"] == [{"filters": 32, "kernel_size": 3, "pool_size": 2}] * 2
    assert "filters" not in body["spec"]
    assert body["summary"]["flatten_size"] == 5 * 5 * 32
    assert body["summary"]["total_params"] == sum(
        layer["params"] for layer in body["summary"]["layers"]
    )
    assert client.get(response.headers["location"]).json()["spec"] == body["spec"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"conv_layers": 4}, "conv_4 has a 3x3 kernel but its input is only 1x1"),
        ({"filtres": 32}, "Extra inputs are not permitted"),
        ({"conv_layers": [{"filters": 8, "stride": 2}]}, "Extra inputs are not permitted"),
        ({"filters": 0}, "greater than or equal to 1"),
        ({"filters": 100000}, "less than or equal to 512"),
        ({"epochs": -1}, "greater than or equal to 1"),
        ({"epochs": 100000}, "less than or equal to 500"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"dense_units": [0]}, "greater than or equal to 1"),
        ({"train_samples": 70000}, "less than or equal to 60000"),
        ({"learning_rate": 0}, "greater than 0"),
        ({"device": "tpu"}, "'auto', 'cpu' or 'gpu'"),
        ({"conv_layers": 1, "filters": 512, "pool_size": 0, "dense_units": [4096]}, "parameters"),
        ({"stop": {"metric": "val_loss", "threshold": 0.3}}, "needs validation data"),
        ({"stop": {"metric": "f1", "threshold": 0.3}}, "'loss', 'accuracy', 'val_loss' or"),
        ({"conv_layers": 9}, "less than or equal to 8"),
    ],
)
def test_bad_specs_are_422_with_a_message_and_nothing_is_queued(client, payload, message):
    response = client.post("/experiments", json=payload)
    assert response.status_code == 422
    assert message in response.text
    assert client.get("/experiments").json()["total"] == 0


def test_malformed_json_is_422_and_says_so(client):
    response = client.post(
        "/experiments", content=b'{"conv_layers": 2,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON decode error" in response.text


def test_val_metric_stop_is_accepted_with_validation():
    spec = ExperimentCreate(
        validation_split=0.1, stop={"metric": "val_accuracy", "threshold": 0.8}
    ).to_spec()
    assert spec.stop.metric == "val_accuracy"
