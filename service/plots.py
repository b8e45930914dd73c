"""Learning curves, confusion matrices and misclassified test images as PNG images.

Matplotlib loads with the first figure, not with this module: with scipy, which the studies'
statistics load when first used, it was half of the API's import time (bench/api_startup.py),
and most API processes never draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service.datasets import CLASS_NAMES
from service.models import EpochMetric

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(**options: Any) -> Figure:
    """A matplotlib Figure, laid out "constrained"."""
    # The object-oriented Figure needs no pyplot state, so request threads can draw at once.
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **options)


def learning_curve_png(title: str, epochs: Sequence[EpochMetric]) -> bytes:
    """Loss and accuracy per epoch, training and (when present) validation, side by side."""
    figure = new_figure(figsize=(10, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    numbers = [e.epoch for e in epochs]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(numbers, [getattr(e, metric) for e in epochs], marker="o", label="training")
        validation = [getattr(e, f"val_{metric}") for e in epochs]
        if any(value is not None for value in validation):
            axes.plot(numbers, validation, marker="o", label="validation")
        epoch_axes(axes, metric)
        axes.legend()
    figure.suptitle(title)
    return png_bytes(figure)


def epoch_axes(axes: Axes, ylabel: str) -> None:
    """Epochs on x, whole numbers only (matplotlib would mark 1.5 on a two-epoch run)."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def confusion_matrix_png(title: str, matrix: Sequence[Sequence[int]]) -> bytes:
    """Test images by true class (rows) and predicted class (columns) as a heat map, each
    cell with its count: the diagonal is what the model got right."""
    figure = new_figure(figsize=(8, 7))
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
    return png_bytes(figure)


def misclassified_png(
    title: str, test_images: np.ndarray, misclassified: Sequence[Sequence[int]]
) -> bytes:
    """The test images a model got wrong, in a square-ish grid, each captioned with its true
    and predicted class; `misclassified` holds [index, true, predicted] rows."""
    columns = max(1, math.ceil(math.sqrt(len(misclassified))))
    rows = max(1, math.ceil(len(misclassified) / columns))
    # Never narrower than the title, for a run with few or no mistakes.
    figure = new_figure(figsize=(max(1.6 * columns, 4.8), 1.7 * rows + 0.4))
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in grid:
        axes.set_axis_off()
    for axes, (index, true, predicted) in zip(grid, misclassified, strict=False):
        axes.imshow(test_images[index], cmap="gray", vmin=0, vmax=255)
        axes.set_title(
            f"#{index}\n{CLASS_NAMES[true]} → {CLASS_NAMES[predicted]}", fontsize=7, pad=2
        )
    if not misclassified:
        grid[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    figure.suptitle(title)
    return png_bytes(figure)


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
