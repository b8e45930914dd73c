"""A seeded run on the CPU repeats exactly, and every run records what it takes to repeat it."""

import hashlib
import platform
import re

import numpy as np

from tests.conftest import submit

SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"\d+\.\d+")


def per_epoch(body: dict) -> list[tuple[float, float | None]]:
    return [(epoch["loss"], epoch["val_loss"]) for epoch in body["epochs"]]


# Both databases: the training is the same, but the record is stored and read back as JSON.
def test_the_same_spec_and_seed_give_the_same_losses_and_a_drawn_seed_repeats_its_run(
    client, drain, dataset
):
    seeded = {"seed": 1234, "validation_split": 0.2}
    # Unseeded runs between the seeded ones: the child trains them all, one after another.
    first = submit(client, **seeded)
    unseeded = [submit(client, seed=None), submit(client, seed=None)]
    again = submit(client, **seeded)
    drain()
    first, again, *unseeded = (
        client.get(f"/experiments/{e['id']}").json() for e in (first, again, *unseeded)
    )
    assert {body["status"] for body in (first, again, *unseeded)} == {"succeeded"}

    assert per_epoch(first) == per_epoch(again)
    assert all(val_loss is not None for _, val_loss in per_epoch(first))
    assert first["test"]["loss"] == again["test"]["loss"]

    record = first["reproducibility"]
    assert record["seed"] == 1234 and record["deterministic"] is True
    assert record["backend"] == first["backend"]
    for version in ("keras_version", "backend_version", "numpy_version"):
        assert VERSION.match(record[version]), record
    assert record["python_version"] == platform.python_version()
    assert record["numpy_version"] == np.__version__
    assert record["device_name"].strip()
    assert set(record["data_sha256"]) == {path.name for path in dataset.files}
    assert all(SHA256.fullmatch(digest) for digest in record["data_sha256"].values())
    labels = next(path for path in dataset.files if path.name.startswith("t10k-labels"))
    assert record["data_sha256"][labels.name] == hashlib.sha256(labels.read_bytes()).hexdigest()

    # Each unseeded run drew a seed of its own, not one the seeded run before it left behind.
    drawn = [body["reproducibility"]["seed"] for body in unseeded]
    assert all(isinstance(seed, int) and 0 <= seed < 2**31 for seed in drawn)
    assert drawn[0] != drawn[1] and 1234 not in drawn
    assert not any(body["reproducibility"]["deterministic"] for body in unseeded)
    assert per_epoch(unseeded[0]) != per_epoch(unseeded[1])

    # The drawn seed is the one the run used: sent back as `seed`, it gives the same run.
    repeat = submit(client, seed=drawn[0])
    drain()
    assert per_epoch(client.get(f"/experiments/{repeat['id']}").json()) == per_epoch(unseeded[0])


def test_reproducibility_is_null_until_training_starts(client):
    created = submit(client)
    assert created["reproducibility"] is None
    assert client.get(f"/experiments/{created['id']}").json()["reproducibility"] is None
