"""A training child keeps compiled models across runs of one architecture: a run on a kept
model trains exactly as a new model would."""

from dataclasses import dataclass

import keras
import numpy as np

from service.ml.backend import clear_backend_state
from service.ml.compiled import CompiledModels
from service.ml.fit import train
from service.ml.model import build_model
from service.spec import ExperimentCreate


@dataclass
class Counter:
    value: int = 0


def spec(**overrides):
    fields = {"conv_layers": 1, "filters": 4, "dense_units": [8], "epochs": 2}
    return ExperimentCreate(**{**fields, "train_samples": 256, "batch_size": 64, **overrides})


def trained(dataset, created: ExperimentCreate, models: CompiledModels | None):
    """Each epoch's metrics and the test result of one run."""
    epochs = []
    result = train(
        created.to_spec(),
        dataset,
        seed=created.seed,
        device="cpu",
        send_epoch=lambda finished: epochs.append(finished.result),
        progress=(Counter(), Counter()),
        models=models,
    )
    clear_backend_state()  # As the child does after each run.
    test = (result.test_loss, result.test_accuracy, result.confusion_matrix)
    losses = [(e.loss, e.accuracy, e.val_loss, e.val_accuracy) for e in epochs]
    return losses, test


def test_a_run_on_a_kept_model_trains_exactly_as_on_a_new_one(dataset):
    wanted = spec(seed=7, learning_rate=0.003, batch_size=32, validation_split=0.25)
    fresh = trained(dataset, wanted, models=None)

    models = CompiledModels()
    # The kept model ends this run trained, with another learning rate and optimizer state.
    trained(dataset, spec(seed=1, learning_rate=0.01, epochs=3), models)
    kept = models.build(wanted.to_spec(), "cpu")
    assert trained(dataset, wanted, models) == fresh
    assert models.build(wanted.to_spec(), "cpu") is kept


def test_a_kept_model_starts_from_the_new_models_weights(dataset):
    models = CompiledModels()
    trained(dataset, spec(seed=1), models)
    keras.utils.set_random_seed(2)
    kept = models.build(spec().to_spec(), "cpu")
    # The weights a new model of this seed starts from, as build_model draws them.
    keras.utils.set_random_seed(2)
    wanted = [np.asarray(v) for v in build_model(spec().to_spec()).weights]
    assert all(np.array_equal(np.asarray(v), w) for v, w in zip(kept.weights, wanted, strict=True))
    assert int(kept.optimizer.iterations.numpy()) == 0
    assert models.build(spec().to_spec(), "cpu") is kept


def test_only_the_same_layers_on_the_same_device_share_a_model():
    models = CompiledModels(capacity=2)
    first = models.build(spec().to_spec(), "cpu")
    # How it trains is not part of the architecture.
    again = spec(learning_rate=0.02, batch_size=16, epochs=4, seed=9).to_spec()
    assert models.build(again, "cpu") is first
    assert models.build(spec().to_spec(), "gpu") is not first
    assert models.build(spec(filters=5).to_spec(), "cpu") is not first
    # Two other architectures since: the first one's model was let go.
    assert models.build(spec().to_spec(), "cpu") is not first
