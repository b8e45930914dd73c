"""Spec → Keras model, and a model to and from the bytes of a `.keras` file.

Written against `keras` only, so the TensorFlow, JAX and PyTorch backends all run it.
"""

import tempfile
from pathlib import Path

import keras

from service.architecture import CHANNELS, IMAGE_SIZE, NUM_CLASSES
from service.spec import ExperimentSpec


def build_model(spec: ExperimentSpec) -> keras.Model:
    """The network a spec describes, compiled with Adam and sparse cross-entropy."""
    layers: list[keras.Layer] = [keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS))]
    for index, conv in enumerate(spec.conv_layers, start=1):
        layers.append(
            keras.layers.Conv2D(
                conv.filters, conv.kernel_size, activation="relu", name=f"conv_{index}"
            )
        )
        if conv.pool_size:
            layers.append(keras.layers.MaxPooling2D(conv.pool_size, name=f"pool_{index}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for index, units in enumerate(spec.dense_units, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"dense_{index}"))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output"))

    model = keras.Sequential(layers, name="experiment")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def save_model_bytes(model: keras.Model) -> bytes:
    """The model as the bytes of a `.keras` file."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.keras"
        model.save(path)
        return path.read_bytes()


def load_model_bytes(data: bytes) -> keras.Model:
    """A model back from the bytes of a `.keras` file."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.keras"
        path.write_bytes(data)
        return keras.saving.load_model(path)
