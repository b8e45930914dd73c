"""The training run itself: fit from scratch or from a checkpoint, evaluate, save.

Written against `keras` only, so the TensorFlow, JAX and PyTorch backends all train it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from service.datasets import FashionMNIST, to_model_input
from service.evaluation import confusion_matrix
from service.ml.callbacks import (
    Checkpoint,
    Counter,
    Interruption,
    NaNGuard,
    Progress,
    StopThreshold,
)
from service.ml.compiled import CompiledModels
from service.ml.messages import EpochFinished
from service.ml.model import build_model, load_model_bytes, save_model_bytes
from service.results import MISCLASSIFIED_KEPT, ResumePoint, TrainingResult
from service.spec import ExperimentSpec

EVALUATE_BATCH_SIZE = 512


class TrainingInterrupted(Exception):
    """Training stopped early because `stop_now` or `stop_after_epoch` said so."""


def training_count(spec: ExperimentSpec, dataset: FashionMNIST) -> int:
    """How many training images the spec uses: its `train_samples`, or all of them."""
    return min(spec.train_samples or len(dataset.train_images), len(dataset.train_images))


def training_arrays(spec: ExperimentSpec, dataset: FashionMNIST) -> tuple[np.ndarray, np.ndarray]:
    """The (first `train_samples`) training images scaled to [0, 1], and their labels.

    A float32 copy (188 MB for all 60,000 images): make it once per run.
    """
    count = training_count(spec, dataset)
    return to_model_input(dataset.train_images[:count]), dataset.train_labels[:count]


def train(
    spec: ExperimentSpec,
    dataset: FashionMNIST,
    *,
    seed: int,
    device: str,
    send_epoch: Callable[[EpochFinished], None],
    progress: tuple[Counter, Counter],
    stop_now: Callable[[], bool] = lambda: False,
    stop_after_epoch: Callable[[int], bool] = lambda epoch: False,
    resume: ResumePoint | None = None,
    models: CompiledModels | None = None,
) -> TrainingResult:
    """Train, evaluate on the test set and return the saved `.keras` file.

    `seed` seeds the weights and the shuffling; `send_epoch` gets every whole epoch with its
    checkpoint; `progress` is the (epoch, step) pair to publish where training is. `resume` is
    an earlier attempt's last finished epoch and checkpoint: training continues from there,
    with the optimizer state it had. Raises TrainingInterrupted when `stop_now` turns true
    (checked between batches) or `stop_after_epoch(epoch)` does (asked at each epoch's end,
    after the epoch was sent). `models`, where given, lends a kept model of the spec's
    architecture (its traced steps) to a run that starts from scratch.
    """
    initial_epoch = resume.epoch if resume else 0
    # Python's, NumPy's and the backend's generators, and Keras's own: the initial weights and
    # each epoch's shuffle (tf.random or NumPy, by backend) follow from it. The validation
    # split needs none: it is the last share of the images, before shuffling. A resumed run
    # moves the seed on by its epoch, so it does not replay the first epochs' shuffles.
    keras.utils.set_random_seed(seed + initial_epoch)
    images, labels = training_arrays(spec, dataset)
    steps = spec.steps_per_epoch(len(images))
    interruption = Interruption(stop_now, stop_after_epoch, spec.epochs)
    checkpoint = Checkpoint(send_epoch, steps, interruption, initial_epoch=initial_epoch)
    stop_threshold = StopThreshold(spec.stop, spec.epochs, interruption)
    callbacks = [
        Progress(*progress, steps, interruption),
        NaNGuard(interruption),
        checkpoint,
        stop_threshold,
        interruption,
    ]

    with keras.device(f"{device}:0"):
        if resume:
            model = load_model_bytes(resume.keras_file)
        else:
            model = models.build(spec, device) if models else build_model(spec)
        if initial_epoch < spec.epochs:
            model.fit(
                images,
                labels,
                epochs=spec.epochs,
                initial_epoch=initial_epoch,
                batch_size=spec.batch_size,
                validation_split=spec.validation_split,
                callbacks=callbacks,
                verbose=0,
            )
        if interruption.interrupted:
            raise TrainingInterrupted
        test = evaluate(model, dataset)

    return TrainingResult(
        epochs_run=checkpoint.last_epoch,
        stopped_early=stop_threshold.reason is not None,
        stop_reason=stop_threshold.reason,
        test_loss=test.loss,
        test_accuracy=test.accuracy,
        confusion_matrix=test.confusion_matrix,
        misclassified=test.misclassified,
        keras_file=save_model_bytes(model),
    )


@dataclass(frozen=True)
class TestEvaluation:
    loss: float
    accuracy: float
    confusion_matrix: list[list[int]]
    misclassified: list[list[int]]


def evaluate(model: keras.Model, dataset: FashionMNIST) -> TestEvaluation:
    """Loss, accuracy, the confusion matrix and the first misclassified images on the test
    set, from one pass over it: the accuracy is the matrix's trace over its total, as
    `model.evaluate` would count it."""
    labels = dataset.test_labels
    probabilities = model.predict(
        to_model_input(dataset.test_images), batch_size=EVALUATE_BATCH_SIZE, verbose=0
    )
    # The loss the model was compiled with, averaged over the images as `evaluate` does.
    losses = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    predicted = np.argmax(probabilities, axis=1)
    wrong = np.flatnonzero(predicted != labels)[:MISCLASSIFIED_KEPT]
    return TestEvaluation(
        loss=float(np.mean(keras.ops.convert_to_numpy(losses))),
        accuracy=float(np.mean(predicted == labels)),
        confusion_matrix=confusion_matrix(labels, predicted),
        misclassified=[[int(i), int(labels[i]), int(predicted[i])] for i in wrong],
    )
