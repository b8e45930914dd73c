"""Learning curves as PNG images."""

import io
from collections.abc import Sequence

# The object-oriented Figure needs no pyplot state, so request threads can draw at once.
from matplotlib.figure import Figure

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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
