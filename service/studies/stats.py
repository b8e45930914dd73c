"""Small-sample statistics for studies: t-intervals, Welch differences, per-run derived metrics."""

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from service.results import EpochResult
from service.studies.runs import StudyRun

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A sample's mean with its spread and a Student-t interval (None where n < 2)."""

    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


@dataclass(frozen=True)
class Difference:
    """A difference of means (b − a) with its standard error and t-interval."""

    mean: float
    std_error: float | None
    # Welch–Satterthwaite degrees of freedom, or k − 1 for the one-sample fallback.
    df: float | None
    ci_low: float | None
    ci_high: float | None


def _present(values: Iterable[float | None]) -> list[float]:
    return [float(value) for value in values if value is not None]


def _half_width(std_error: float, df: float) -> float:
    # A zero standard error has no degrees of freedom to speak of, and needs no quantile.
    if std_error == 0:
        return 0.0
    # Imported here: with matplotlib, which service.plots loads when first used, it was half of
    # the API's import time (bench/api_startup.py); only a study's comparison needs a quantile.
    from scipy.stats import t as student_t

    quantile = float(student_t.ppf(0.5 + CONFIDENCE / 2, df))
    return quantile * std_error


def estimate(values: Iterable[float | None]) -> Estimate | None:
    """Mean, sample standard deviation and 95% t-interval of the values that are present."""
    present = _present(values)
    if not present:
        return None
    mean = statistics.fmean(present)
    if len(present) < 2:
        return Estimate(mean=mean, std=None, ci_low=None, ci_high=None, n=1)
    std = statistics.stdev(present)
    half = _half_width(std / math.sqrt(len(present)), len(present) - 1)
    return Estimate(mean=mean, std=std, ci_low=mean - half, ci_high=mean + half, n=len(present))


def _interval(mean: float, std_error: float, df: float | None) -> Difference:
    half = 0.0 if df is None else _half_width(std_error, df)
    return Difference(
        mean=mean, std_error=std_error, df=df, ci_low=mean - half, ci_high=mean + half
    )


def _welch_df(variances_of_means: list[tuple[float, int]]) -> float | None:
    """Welch–Satterthwaite: (Σ v)² / Σ v²/(n − 1), over each group's v = s²/n."""
    denominator = sum(v * v / (n - 1) for v, n in variances_of_means)
    if denominator == 0:
        return None
    return sum(v for v, _ in variances_of_means) ** 2 / denominator


def matched_difference(
    contexts: Sequence[tuple[Iterable[float | None], Iterable[float | None]]],
) -> Difference | None:
    """Mean over contexts of (mean b − mean a), each context a pair (a values, b values).

    The standard error is sqrt(Σ SE_c²)/k with SE_c² = s_b²/n_b + s_a²/n_a and Welch–Satterthwaite
    degrees of freedom. When some cell has a single run its variance is unknown, so the interval
    falls back to a one-sample t over the k per-context differences (k ≥ 2), or to none at all.
    Contexts where either side has no values are skipped; None when none is left.
    """
    cells = [(_present(a), _present(b)) for a, b in contexts]
    cells = [(a, b) for a, b in cells if a and b]
    if not cells:
        return None
    differences = [statistics.fmean(b) - statistics.fmean(a) for a, b in cells]
    k = len(cells)
    mean = statistics.fmean(differences)
    if all(len(a) >= 2 and len(b) >= 2 for a, b in cells):
        groups = [(statistics.variance(g) / len(g), len(g)) for cell in cells for g in cell]
        std_error = math.sqrt(sum(v for v, _ in groups)) / k
        return _interval(mean, std_error, _welch_df(groups))
    if k >= 2:
        return _interval(mean, statistics.stdev(differences) / math.sqrt(k), k - 1)
    return Difference(mean=mean, std_error=None, df=None, ci_low=None, ci_high=None)


def difference(
    a_values: Iterable[float | None], b_values: Iterable[float | None]
) -> Difference | None:
    """Difference of means b − a with a Welch 95% interval (None interval if a side has n < 2)."""
    return matched_difference([(a_values, b_values)])


def _epochs_in_order(run: StudyRun) -> list[EpochResult]:
    return sorted(run.epochs, key=lambda epoch: epoch.epoch)


def steady_seconds_per_epoch(run: StudyRun) -> float | None:
    """Median epoch time from the second epoch on: the first one also pays for compilation."""
    later = _epochs_in_order(run)[1:]
    if not later:
        return None
    return float(statistics.median(epoch.seconds for epoch in later))


def first_epoch_seconds(run: StudyRun) -> float | None:
    """Seconds of the first epoch, warm-up included."""
    epochs = _epochs_in_order(run)
    return epochs[0].seconds if epochs else None


def epochs_run(run: StudyRun) -> int:
    """How many epochs the run finished."""
    return len(run.epochs)


def training_seconds(run: StudyRun) -> float | None:
    """Sum of the epoch times; None for a run that finished no epoch."""
    if not run.epochs:
        return None
    return float(sum(epoch.seconds for epoch in run.epochs))


def seconds_to_threshold(run: StudyRun) -> float | None:
    """Cumulative seconds up to and including the first epoch that meets the stop rule."""
    if run.stop_metric is None or run.stop_threshold is None:
        return None
    is_loss = run.stop_metric.endswith("loss")
    elapsed = 0.0
    for epoch in _epochs_in_order(run):
        elapsed += epoch.seconds
        value = getattr(epoch, run.stop_metric, None)
        if value is None:
            continue
        if (value <= run.stop_threshold) if is_loss else (value >= run.stop_threshold):
            return elapsed
    return None


def train_test_gap(run: StudyRun) -> float | None:
    """Last epoch's training accuracy minus test accuracy: how much the model overfits."""
    epochs = _epochs_in_order(run)
    if not epochs or run.test_accuracy is None:
        return None
    return epochs[-1].accuracy - run.test_accuracy
