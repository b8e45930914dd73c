"""A study's comparison: per-variant summaries, Pareto fronts, each varied field's effect, speedup.

Everything here is JSON-friendly once passed through `dataclasses.asdict`.
"""

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.studies import stats
from service.studies.runs import StudyRun
from service.studies.stats import Difference, Estimate

# Each front trades test accuracy (maximized) against one cost (minimized).
PARETO_COSTS = {
    "accuracy_vs_params": "total_params",
    "accuracy_vs_training_seconds": "training_seconds",
}


@dataclass(frozen=True)
class VariantSummary:
    """One variant (its varied values on one device) over its succeeded repeats."""

    variant: str
    device: str
    params: dict[str, Any]
    total_params: int
    flatten_size: int
    activation_bytes_per_batch: int
    runs: int
    # Repeats that did not succeed: the statistics leave them out, so a variant whose weak
    # seeds were pruned shows its luckier ones only; these say how many.
    pruned: int
    failed: int
    test_accuracy: Estimate | None
    test_loss: Estimate | None
    seconds_per_epoch: Estimate | None
    first_epoch_seconds: Estimate | None
    epochs_run: Estimate | None
    seconds_to_threshold: Estimate | None
    train_test_gap: Estimate | None
    training_seconds: Estimate | None


@dataclass(frozen=True)
class Effect:
    """What moving one varied field from a value to the next one does, pooled over contexts."""

    field: str
    from_value: Any
    to_value: Any
    # Contexts (values of the other varied fields, and the device) that hold both cells.
    contexts: int
    # Test accuracy in percentage points, to minus from.
    accuracy_points: Difference | None
    seconds_per_epoch: Difference | None
    # Mean over contexts of (steady seconds per epoch at to) / (at from).
    time_ratio: float | None
    verdict: str


@dataclass(frozen=True)
class Speedup:
    """The same variant on the CPU and on the GPU: speedup is CPU time over GPU time."""

    variant: str
    params: dict[str, Any]
    cpu_seconds_per_epoch: float | None
    gpu_seconds_per_epoch: float | None
    speedup: float | None
    cpu_training_seconds: float | None
    gpu_training_seconds: float | None
    training_speedup: float | None


@dataclass(frozen=True)
class Comparison:
    variants: list[VariantSummary]
    # Keyed by the names in PARETO_COSTS.
    pareto: dict[str, list[dict[str, Any]]]
    effects: list[Effect]
    speedup: list[Speedup]


def canonical(value: Any) -> str:
    """Compact JSON with sorted keys: one spelling per value, usable as a key."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _cells(runs: Sequence[StudyRun]) -> dict[tuple[str, str], list[StudyRun]]:
    """Runs by (variant, device), in order of first appearance."""
    cells: dict[tuple[str, str], list[StudyRun]] = {}
    for run in runs:
        cells.setdefault((run.variant, run.device), []).append(run)
    return cells


def summarize(runs: Sequence[StudyRun]) -> VariantSummary:
    """Summary of one variant's runs; only succeeded runs enter the statistics."""
    first = runs[0]
    succeeded = [run for run in runs if run.succeeded]

    def over(metric: Callable[[StudyRun], float | None]) -> Estimate | None:
        return stats.estimate(metric(run) for run in succeeded)

    return VariantSummary(
        variant=first.variant,
        device=first.device,
        params=first.params,
        total_params=first.total_params,
        flatten_size=first.flatten_size,
        activation_bytes_per_batch=first.activation_bytes_per_batch,
        runs=len(succeeded),
        pruned=sum(run.status == "pruned" for run in runs),
        failed=sum(run.status == "failed" for run in runs),
        test_accuracy=over(lambda run: run.test_accuracy),
        test_loss=over(lambda run: run.test_loss),
        seconds_per_epoch=over(stats.steady_seconds_per_epoch),
        first_epoch_seconds=over(stats.first_epoch_seconds),
        epochs_run=over(stats.epochs_run),
        seconds_to_threshold=over(stats.seconds_to_threshold),
        train_test_gap=over(stats.train_test_gap),
        training_seconds=over(stats.training_seconds),
    )


def summarize_variants(runs: Sequence[StudyRun]) -> list[VariantSummary]:
    """One summary per (variant, device), in order of first appearance."""
    return [summarize(cell_runs) for cell_runs in _cells(runs).values()]


def _cost_of(variant: VariantSummary, cost: str) -> float | None:
    value = getattr(variant, cost)
    return value.mean if isinstance(value, Estimate) else value


def pareto(variants: Sequence[VariantSummary], cost: str) -> list[dict[str, Any]]:
    """Variants no other beats on both mean test accuracy and `cost`, cheapest first.

    `cost` names a VariantSummary field, a number or an Estimate whose mean is used.
    """
    points = []
    for variant in variants:
        value = _cost_of(variant, cost)
        if variant.test_accuracy is not None and value is not None:
            points.append((value, variant.test_accuracy.mean, variant))
    # Cheapest first, and most accurate first within a cost: a point then survives exactly when
    # it beats every cheaper point's accuracy, or ties the point just kept on both counts.
    points.sort(key=lambda point: (point[0], -point[1]))
    front = []
    best = -math.inf
    last_kept = None
    for value, accuracy, variant in points:
        if accuracy > best or (value, accuracy) == last_kept:
            front.append(
                {
                    "variant": variant.variant,
                    "device": variant.device,
                    "params": variant.params,
                    "test_accuracy": accuracy,
                    cost: value,
                }
            )
            best = accuracy
            last_kept = (value, accuracy)
    return front


def _value_order(value: Any) -> tuple[int, float, str]:
    """Numbers by value and first; every other value by its canonical JSON."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, canonical(value))


# One context's two cells: the runs at the lower value and at the next one up.
MatchedCells = tuple[list[StudyRun], list[StudyRun]]


def _neighbour_pairs(
    field: str, varied: Sequence[str], cells: dict[tuple[str, str], list[StudyRun]]
) -> tuple[dict[str, Any], dict[tuple[str, str], list[MatchedCells]]]:
    """Values of `field` by canonical JSON, and neighbouring value pairs with their cells."""
    values: dict[str, Any] = {}
    contexts: dict[str, dict[str, list[StudyRun]]] = {}
    for (_, device), cell_runs in cells.items():
        succeeded = [run for run in cell_runs if run.succeeded]
        if not succeeded:
            continue
        params = succeeded[0].params
        others = {name: params.get(name) for name in varied if name != field}
        value = params.get(field)
        values[canonical(value)] = value
        by_value = contexts.setdefault(canonical([device, others]), {})
        by_value.setdefault(canonical(value), []).extend(succeeded)
    pairs: dict[tuple[str, str], list[MatchedCells]] = {}
    for by_value in contexts.values():
        ordered = sorted(by_value, key=lambda key: _value_order(values[key]))
        for low, high in itertools.pairwise(ordered):
            pairs.setdefault((low, high), []).append((by_value[low], by_value[high]))
    return values, pairs


def _accuracy_points(runs: list[StudyRun]) -> list[float | None]:
    return [None if run.test_accuracy is None else 100 * run.test_accuracy for run in runs]


def _steady_seconds(runs: list[StudyRun]) -> list[float | None]:
    return [stats.steady_seconds_per_epoch(run) for run in runs]


def _mean_ratio(contexts: list[tuple[list[float | None], list[float | None]]]) -> float | None:
    ratios = []
    for a_values, b_values in contexts:
        a_present = [value for value in a_values if value is not None]
        b_present = [value for value in b_values if value is not None]
        if a_present and b_present and statistics.fmean(a_present) > 0:
            ratios.append(statistics.fmean(b_present) / statistics.fmean(a_present))
    return statistics.fmean(ratios) if ratios else None


def _describe(value: Any) -> str:
    return value if isinstance(value, str) else canonical(value)


def _signed(number: float) -> str:
    return f"{number:+.1f}".replace("-", "−")


def _accuracy_words(accuracy: Difference | None) -> str:
    if accuracy is None:
        return "no test accuracy to compare"
    if accuracy.ci_low is None or accuracy.ci_high is None:
        return "not enough repeats to tell (run repeats ≥ 2)"
    interval = f"95% CI {_signed(accuracy.ci_low)} to {_signed(accuracy.ci_high)}"
    if accuracy.ci_low > 0 or accuracy.ci_high < 0:
        return f"{_signed(accuracy.mean)} pt ({interval})"
    return f"no clear difference in accuracy ({interval} pt)"


def verdict(
    field: str,
    from_value: Any,
    to_value: Any,
    accuracy_points: Difference | None,
    time_ratio: float | None,
) -> str:
    """Plain words, e.g. "64 vs 32 filters: +0.8 pt (95% CI +0.3 to +1.3), ×2.10 time per epoch"."""
    words = f"{_describe(to_value)} vs {_describe(from_value)} {field}: "
    words += _accuracy_words(accuracy_points)
    if time_ratio is not None:
        words += f", ×{time_ratio:.2f} time per epoch"
    return words


def _effect(field: str, from_value: Any, to_value: Any, matched: list[MatchedCells]) -> Effect:
    accuracy = stats.matched_difference(
        [(_accuracy_points(a), _accuracy_points(b)) for a, b in matched]
    )
    seconds = [(_steady_seconds(a), _steady_seconds(b)) for a, b in matched]
    time_ratio = _mean_ratio(seconds)
    return Effect(
        field=field,
        from_value=from_value,
        to_value=to_value,
        contexts=len(matched),
        accuracy_points=accuracy,
        seconds_per_epoch=stats.matched_difference(seconds),
        time_ratio=time_ratio,
        verdict=verdict(field, from_value, to_value, accuracy, time_ratio),
    )


def effects(runs: Sequence[StudyRun], varied: Sequence[str]) -> list[Effect]:
    """Each varied field's neighbouring-value effects, matched on the other fields and device.

    Values are ordered numbers first, by value, then any other value (lists, strings, objects)
    by its canonical JSON string; effects come in `varied` order, then in that value order.
    """
    cells = _cells(runs)
    found = []
    for field in varied:
        values, pairs = _neighbour_pairs(field, varied, cells)
        ordered = sorted(
            pairs, key=lambda pair: (_value_order(values[pair[0]]), _value_order(values[pair[1]]))
        )
        found.extend(
            _effect(field, values[low], values[high], pairs[low, high]) for low, high in ordered
        )
    return found


def _mean(value: Estimate | None) -> float | None:
    return None if value is None else value.mean


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def speedup(variants: Sequence[VariantSummary]) -> list[Speedup]:
    """CPU over GPU time for every variant that ran on both; empty when none did."""
    by_device: dict[str, dict[str, VariantSummary]] = {}
    for variant in variants:
        by_device.setdefault(variant.variant, {})[variant.device] = variant
    found = []
    for devices in by_device.values():
        cpu, gpu = devices.get("cpu"), devices.get("gpu")
        if cpu is None or gpu is None:
            continue
        cpu_epoch, gpu_epoch = _mean(cpu.seconds_per_epoch), _mean(gpu.seconds_per_epoch)
        cpu_total, gpu_total = _mean(cpu.training_seconds), _mean(gpu.training_seconds)
        found.append(
            Speedup(
                variant=cpu.variant,
                params=cpu.params,
                cpu_seconds_per_epoch=cpu_epoch,
                gpu_seconds_per_epoch=gpu_epoch,
                speedup=_ratio(cpu_epoch, gpu_epoch),
                cpu_training_seconds=cpu_total,
                gpu_training_seconds=gpu_total,
                training_speedup=_ratio(cpu_total, gpu_total),
            )
        )
    return found


def compare(runs: list[StudyRun], varied: list[str]) -> Comparison:
    """The whole comparison of a study's runs, ordered by experiment id, over its varied fields."""
    variants = summarize_variants(runs)
    return Comparison(
        variants=variants,
        pareto={name: pareto(variants, cost) for name, cost in PARETO_COSTS.items()},
        effects=effects(runs, varied),
        speedup=speedup(variants),
    )
