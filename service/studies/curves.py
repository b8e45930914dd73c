"""A study's learning curves: every variant's mean per epoch on one pair of axes."""

import statistics
from collections import defaultdict

from service.plots import epoch_axes, new_figure, png_bytes
from service.studies.runs import StudyRun

METRICS = ("loss", "accuracy")


def variant_label(run: StudyRun) -> str:
    """The varied fields as `filters=32 conv_layers=2`, with the device where it matters."""
    label = " ".join(f"{name}={value}" for name, value in run.params.items()) or "base"
    return f"{label} ({run.device})" if run.device != "auto" else label


def mean_curves(
    runs: list[StudyRun], metric: str
) -> dict[str, list[tuple[int, float, float | None]]]:
    """Per variant: (epoch, mean, std or None) over its succeeded runs that reached the epoch."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.succeeded:
            for epoch in run.epochs:
                values[variant_label(run)][epoch.epoch].append(getattr(epoch, metric))
    return {
        label: [
            (epoch, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None)
            for epoch, v in sorted(by_epoch.items())
        ]
        for label, by_epoch in values.items()
    }


def learning_curves_png(title: str, runs: list[StudyRun]) -> bytes:
    """Mean training loss and accuracy per epoch for each variant, a ±1 std band where
    repeats give one; every variant shares the axes, so the curves compare at a glance."""
    figure = new_figure(figsize=(12, 5))
    for axes, metric in zip(figure.subplots(1, 2), METRICS, strict=True):
        for label, points in mean_curves(runs, metric).items():
            epochs = [epoch for epoch, _, _ in points]
            means = [mean for _, mean, _ in points]
            (line,) = axes.plot(epochs, means, marker="o", label=label)
            band = [(e, m, s) for e, m, s in points if s is not None]
            if band:
                axes.fill_between(
                    [e for e, _, _ in band],
                    [m - s for _, m, s in band],
                    [m + s for _, m, s in band],
                    color=line.get_color(),
                    alpha=0.15,
                )
        epoch_axes(axes, f"training {metric} (mean over repeats)")
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    figure.suptitle(title)
    return png_bytes(figure)
