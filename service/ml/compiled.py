"""Compiled models kept across the runs of one architecture in a training child.

Keras traces a new model's training, validation and prediction steps in its first `fit` and
`predict`: about half of a small run's time (bench/trainer_child.py). A study's repeats, and
its variants that differ only in how they train (learning rate, batch size, epochs, images,
stop rule), share an architecture. Such a run gets the kept model with the weights and the
optimizer state of a model built anew for it, so it trains exactly as that new model would:
the same initial weights from the same seed, the same learning rate, a zeroed optimizer.
"""

from collections import OrderedDict

import keras

from service.ml.backend import backend_name
from service.ml.model import build_model
from service.spec import ExperimentSpec

# Enough for the architectures of a small study taking turns; each holds its traced graphs.
KEPT_ARCHITECTURES = 4
# Where a run on a kept model trains exactly as on a new one (tests/test_compiled.py). Not on
# JAX (tests/test_backends.py): a new model's first fit takes a batch from its data to build
# its metrics, which draws one more NumPy shuffle than a kept model's fit, so the same seed
# would show the images in another order.
KEPT_ON_BACKENDS = ("tensorflow",)


class CompiledModels:
    """The most recently trained model of each of the last few architectures, per device."""

    def __init__(self, capacity: int = KEPT_ARCHITECTURES) -> None:
        self.capacity = capacity
        self._models: OrderedDict[str, keras.Model] = OrderedDict()

    def build(self, spec: ExperimentSpec, device: str) -> keras.Model:
        """A model for `spec`, as `build_model` makes it, on a kept one's traced steps where
        one of its architecture was trained on `device` before."""
        model = build_model(spec)
        if backend_name() not in KEPT_ON_BACKENDS:
            return model
        key = architecture_key(spec, device)
        kept = self._models.get(key)
        if kept is None or not _take_state(kept, model):
            kept = model
        self._models[key] = kept
        self._models.move_to_end(key)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return kept


def architecture_key(spec: ExperimentSpec, device: str) -> str:
    """What the traced steps depend on: the layers and the device (the rest is state)."""
    layers = spec.model_dump(include={"conv_layers", "dense_units"})
    return f"{device}:{layers}"


def _take_state(kept: keras.Model, new: keras.Model) -> bool:
    """Give `kept` the weights and optimizer variables of `new`; False if their shapes differ."""
    for model in (kept, new):  # A model's optimizer makes its variables at the first fit.
        model.optimizer.build(model.trainable_variables)
    targets = [*kept.weights, *kept.optimizer.variables]
    sources = [*new.weights, *new.optimizer.variables]
    if [v.shape for v in targets] != [v.shape for v in sources]:
        return False
    for target, source in zip(targets, sources, strict=True):
        target.assign(source)
    return True
