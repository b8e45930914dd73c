"""What a training run reports back: kept free of Keras, so the worker process never imports it."""

from dataclasses import dataclass
from typing import NamedTuple

# Test images whose index and classes a run keeps when the model got them wrong: enough for a
# page of examples, small enough to store with every run.
MISCLASSIFIED_KEPT = 100


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
    # The first MISCLASSIFIED_KEPT wrong answers, by test index: [index, true, predicted].
    misclassified: list[list[int]]


@dataclass(frozen=True)
class Reproducibility:
    """What it takes to train a run again the same way: the seed it used, the software and
    device it ran on, and the data files it read."""

    seed: int
    keras_version: str
    backend: str
    backend_version: str
    numpy_version: str
    python_version: str
    device_name: str
    # File name → SHA-256 of each training and test file loaded.
    data_sha256: dict[str, str]
    # Seeded by the user and run on the CPU with the backend's determinism switch on: the same
    # spec on the same versions gives the same losses, epoch by epoch.
    deterministic: bool


class ResumePoint(NamedTuple):
    """An earlier attempt's last finished epoch and the `.keras` file saved after it."""

    epoch: int
    keras_file: bytes
