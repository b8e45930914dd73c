"""Learning curves and confusion matrices as PNG images."""

import io
from collections.abc import Sequence

# The object-oriented Figure needs no pyplot state, so request threads can draw at once.
from matplotlib.figure import Figure

from service.datasets import CLASS_NAMES
from service.models import EpochMetric


def learning_curve_png(title: str, epochs: Sequence[EpochMetric]) -> bytes:
    """Loss and accuracy per epoch, training and (when present) validation, side by side."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    numbers = [e.epoch for e in epochs]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(numbers, [getattr(e, metric) for e in epochs], marker="o", label="training")
        validation = [getattr(e, f"val_{metric}") for e in epochs]
        if any(value is not None for value in validation):
            axes.plot(numbers, validation, marker="o", label="validation")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return _png(figure)


def confusion_matrix_png(title: str, matrix: Sequence[Sequence[int]]) -> bytes:
    """Test images by true class (rows) and predicted class (columns) as a heat map, each
    cell with its count: the diagonal is what the model got right."""
    figure = Figure(figsize=(8, 7), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, label="test images")
    ticks = range(len(CLASS_NAMES))
    axes.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    axes.set_yticks(ticks, CLASS_NAMES)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    brightest = max(max(row) for row in matrix) or 1
    for row, counts in enumerate(matrix):
        for column, count in enumerate(counts):
            colour = "white" if count > brightest / 2 else "black"
            axes.text(column, row, count, ha="center", va="center", fontsize=8, color=colour)
    axes.set_title(title)
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
