"""What a training run reports back: kept free of Keras, so the worker process never imports it."""

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    ms_per_step: float


@dataclass(frozen=True)
class TrainingResult:
    epochs_run: int
    stopped_early: bool
    stop_reason: str | None
    test_loss: float
    test_accuracy: float
    keras_file: bytes
    # Rows are true classes, columns predicted ones; the counts sum to the test set's size.
    confusion_matrix: list[list[int]]


class ResumePoint(NamedTuple):
    """An earlier attempt's last finished epoch and the `.keras` file saved after it."""

    epoch: int
    keras_file: bytes
