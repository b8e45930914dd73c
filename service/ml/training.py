"""Spec → Keras model, and the training run itself: epochs, early stop, test evaluation, save.

Written against `keras` only, so the TensorFlow, JAX and PyTorch backends all train it.
"""

import math
import time
from collections.abc import Callable

import keras
import numpy as np

from service.datasets import FashionMNIST, to_model_input
from service.ml.model import build_model, load_model_bytes, save_model_bytes
from service.results import EpochResult, TrainingResult
from service.spec import ExperimentSpec

EVALUATE_BATCH_SIZE = 512


def available_gpus() -> list[str]:
    """Names of the GPUs the active Keras backend can use, e.g. 'NVIDIA H100 80GB HBM3'."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    if backend == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def describe_device(kind: str) -> str:
    """The label stored on an experiment: 'CPU' or 'GPU:0 (<name>)'."""
    if kind == "gpu":
        gpus = available_gpus()
        return f"GPU:0 ({gpus[0]})" if gpus else "GPU:0"
    return "CPU"


class TrainingInterrupted(Exception):
    """Training stopped between batches because `should_stop` said so."""


class Progress:
    """Where training is; written by the training loop, read by the worker's reporter thread."""

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.step = 0


class _RunCallback(keras.callbacks.Callback):
    """Times epochs, reports them, applies the stop rule and honours interruption."""

    # Its batch hook only stores an int and reads a flag, so Keras may call it asynchronously
    # and keep the training step free of Python round-trips.
    async_safe = True

    def __init__(
        self,
        spec: ExperimentSpec,
        progress: Progress,
        on_epoch: Callable[[EpochResult, keras.Model], None],
        should_stop: Callable[[], bool],
        stop_after_epoch: Callable[[], bool],
        epochs_run: int,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.progress = progress
        self.on_epoch = on_epoch
        self.should_stop = should_stop
        self.stop_after_epoch = stop_after_epoch
        self.interrupted = False
        self.stop_reason: str | None = None
        self.epochs_run = epochs_run
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.progress.epoch, self.progress.step = epoch + 1, 0
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.progress.step = batch + 1
        if self.should_stop():
            self.interrupted = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.interrupted:
            return  # A partial epoch is not an epoch: it is neither stored nor counted.
        self.progress.step = self.progress.steps_per_epoch
        seconds = time.perf_counter() - self._epoch_started
        logs = logs or {}
        result = EpochResult(
            epoch=epoch + 1,
            loss=float(logs["loss"]),
            accuracy=float(logs["accuracy"]),
            val_loss=_optional_float(logs.get("val_loss")),
            val_accuracy=_optional_float(logs.get("val_accuracy")),
            seconds=seconds,
            ms_per_step=seconds * 1000 / self.progress.steps_per_epoch,
        )
        if not math.isfinite(result.loss):
            raise FloatingPointError(
                f"the loss became {result.loss} in epoch {epoch + 1}: lower learning_rate"
            )
        self.epochs_run = epoch + 1
        self.on_epoch(result, self.model)
        if self.stop_after_epoch() and epoch + 1 < self.spec.epochs:
            self.interrupted = True
            self.model.stop_training = True
            return
        stop = self.spec.stop
        if stop and epoch + 1 < self.spec.epochs:
            value = float(logs[stop.metric])
            if stop.reached(value):
                comparison = "<=" if stop.metric.endswith("loss") else ">="
                self.stop_reason = (
                    f"{stop.metric} {value:.4f} {comparison} {stop.threshold} "
                    f"after epoch {epoch + 1}"
                )
                self.model.stop_training = True


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def training_arrays(spec: ExperimentSpec, dataset: FashionMNIST) -> tuple[np.ndarray, np.ndarray]:
    """The (first `train_samples`) training images scaled to [0, 1], and their labels."""
    count = spec.train_samples or len(dataset.train_images)
    return to_model_input(dataset.train_images[:count]), dataset.train_labels[:count]


def steps_per_epoch(spec: ExperimentSpec, train_count: int) -> int:
    fitted = int(train_count * (1 - spec.validation_split))
    return math.ceil(fitted / spec.batch_size)


def train(
    spec: ExperimentSpec,
    dataset: FashionMNIST,
    *,
    device: str,
    progress: Progress,
    on_epoch: Callable[[EpochResult, keras.Model], None],
    should_stop: Callable[[], bool] = lambda: False,
    stop_after_epoch: Callable[[], bool] = lambda: False,
    resume: tuple[int, bytes] | None = None,
) -> TrainingResult:
    """Train, evaluate on the test set and return the saved `.keras` file.

    `on_epoch` gets every finished epoch with the model, to checkpoint it. `resume` is an
    earlier attempt's last finished epoch and checkpoint: training continues from there, with
    the optimizer state it had. Raises TrainingInterrupted when `should_stop` turns true
    (checked between batches) or `stop_after_epoch` does (checked at each epoch's end).
    """
    if spec.seed is not None:
        keras.utils.set_random_seed(spec.seed + (resume[0] if resume else 0))
    images, labels = training_arrays(spec, dataset)
    initial_epoch = resume[0] if resume else 0
    callback = _RunCallback(
        spec, progress, on_epoch, should_stop, stop_after_epoch, epochs_run=initial_epoch
    )

    with keras.device(f"{device}:0"):
        model = load_model_bytes(resume[1]) if resume else build_model(spec)
        if initial_epoch < spec.epochs:
            model.fit(
                images,
                labels,
                epochs=spec.epochs,
                initial_epoch=initial_epoch,
                batch_size=spec.batch_size,
                validation_split=spec.validation_split,
                callbacks=[callback],
                verbose=0,
            )
        if callback.interrupted:
            raise TrainingInterrupted
        test_loss, test_accuracy = model.evaluate(
            to_model_input(dataset.test_images),
            dataset.test_labels,
            batch_size=EVALUATE_BATCH_SIZE,
            verbose=0,
        )

    return TrainingResult(
        epochs_run=callback.epochs_run,
        stopped_early=callback.stop_reason is not None,
        stop_reason=callback.stop_reason,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        keras_file=save_model_bytes(model),
    )


def clear_backend_state() -> None:
    """Forget every model built so far, so a training process that lives across experiments
    does not grow with each one: Keras's global state, the backend's graphs and kernel
    caches, and (through a full collection) the reference cycles a model and its layers form.
    """
    if keras.backend.backend() == "tensorflow":
        _forget_custom_gradients()
    keras.backend.clear_session()


def _forget_custom_gradients() -> None:
    """Drop the gradient functions TensorFlow registered while tracing finished runs.

    Its default distribution strategy sums the gradients of every traced training step
    through `tf.custom_gradient`, which registers a gradient function under a fresh
    `CustomGradient-<uid>` name in a process-wide registry and never removes it; each one
    holds its traced graph (about 8 MB per small experiment with TensorFlow 2.21), and
    `clear_session` leaves them there. Between experiments no traced function is alive to
    need them. Best effort: should TensorFlow rename its registry, nothing is dropped and the
    worker's TRAINER_MAX_RSS_BYTES still bounds the process.
    """
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if isinstance(registry, dict):
        for name in [name for name in registry if name.startswith("CustomGradient-")]:
            del registry[name]
