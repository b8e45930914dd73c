"""What a model got right and wrong on the test set, per class: kept free of Keras, so the
training child computes it and the API reads it back with NumPy alone."""

from dataclasses import dataclass

import numpy as np

from service.architecture import NUM_CLASSES
from service.datasets import CLASS_NAMES


@dataclass(frozen=True)
class ClassResult:
    """One class, one against the rest: of the images predicted as it, how many were it
    (precision); of its images, how many were found (recall); and how many images were
    rightly put in or out of it (accuracy)."""

    name: str
    precision: float | None
    recall: float | None
    accuracy: float


def confusion_matrix(true: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    """Counts with the true class as row and the predicted class as column."""
    cells = np.bincount(
        np.asarray(true, np.int64) * NUM_CLASSES + np.asarray(predicted, np.int64),
        minlength=NUM_CLASSES * NUM_CLASSES,
    )
    return cells.reshape(NUM_CLASSES, NUM_CLASSES).tolist()


def misclassified_count(matrix: list[list[int]]) -> int:
    """Every image off the diagonal: those whose predicted class is not their true one."""
    counts = np.asarray(matrix, np.int64)
    return int(counts.sum() - np.trace(counts))


def per_class(matrix: list[list[int]]) -> list[ClassResult]:
    """Each class's precision, recall and one-against-the-rest accuracy; None where a class
    was never predicted (precision) or never present (recall)."""
    counts = np.asarray(matrix, np.int64)
    total = int(counts.sum())
    right = np.diag(counts)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    return [
        ClassResult(
            name=CLASS_NAMES[index],
            precision=_ratio(right[index], predicted[index]),
            recall=_ratio(right[index], actual[index]),
            accuracy=float((total - predicted[index] - actual[index] + 2 * right[index]) / total),
        )
        for index in range(NUM_CLASSES)
    ]


def _ratio(part: int, whole: int) -> float | None:
    return float(part / whole) if whole else None
