"""Study statistics: hand-computed intervals, Pareto against brute force, effects, speedup."""

import dataclasses
import itertools
import json
import math
import random

import pytest

from service.results import EpochResult
from service.studies import stats
from service.studies.comparison import (
    VariantSummary,
    canonical,
    compare,
    effects,
    pareto,
    speedup,
    summarize_variants,
)
from service.studies.runs import StudyRun
from service.studies.stats import Estimate

experiment_ids = itertools.count(1)


def epoch_results(
    seconds: tuple[float, ...], *, losses=None, accuracies=None, val_accuracies=None
) -> tuple[EpochResult, ...]:
    count = len(seconds)
    losses = losses or [1.0 / (index + 1) for index in range(count)]
    accuracies = accuracies or [0.5 + 0.1 * index for index in range(count)]
    val_accuracies = val_accuracies or [None] * count
    return tuple(
        EpochResult(
            epoch=index + 1,
            loss=losses[index],
            accuracy=accuracies[index],
            val_loss=None,
            val_accuracy=val_accuracies[index],
            seconds=seconds[index],
            ms_per_step=1.0,
        )
        for index in range(count)
    )


def make_run(
    params: dict,
    *,
    device: str = "cpu",
    repeat: int = 0,
    status: str = "succeeded",
    accuracy: float | None = 0.9,
    seconds: tuple[float, ...] = (2.0, 1.0, 1.0),
    epochs: tuple[EpochResult, ...] | None = None,
    total_params: int = 1000,
    stop_metric: str | None = None,
    stop_threshold: float | None = None,
) -> StudyRun:
    return StudyRun(
        experiment_id=next(experiment_ids),
        variant=canonical(params),
        params=params,
        device=device,
        repeat=repeat,
        seed=repeat,
        status=status,
        total_params=total_params,
        flatten_size=128,
        activation_bytes_per_batch=4096,
        test_accuracy=accuracy,
        test_loss=None if accuracy is None else 1 - accuracy,
        epochs=epochs if epochs is not None else epoch_results(seconds),
        stop_metric=stop_metric,
        stop_threshold=stop_threshold,
    )


# --- estimate, difference, matched_difference ---


def test_estimate_of_three_values_is_a_student_t_interval():
    result = stats.estimate([0.90, 0.91, 0.92])
    # mean 0.91; deviations ±0.01, 0 → variance (0.0001 + 0.0001)/2 = 0.0001, std 0.01.
    # t(0.975, 2) = 4.302652729749464; half-width 4.302652729749464 × 0.01/√3 = 0.0248413771.
    assert result.n == 3
    assert result.mean == pytest.approx(0.91)
    assert result.std == pytest.approx(0.01)
    assert result.ci_low == pytest.approx(0.91 - 0.0248413771)
    assert result.ci_high == pytest.approx(0.91 + 0.0248413771)


def test_estimate_ignores_missing_values_and_has_no_interval_for_one_value():
    assert stats.estimate([]) is None
    assert stats.estimate([None, None]) is None
    assert stats.estimate([None, 4.0]) == Estimate(
        mean=4.0, std=None, ci_low=None, ci_high=None, n=1
    )


def test_welch_difference_with_equal_sizes_and_spreads_has_pooled_degrees_of_freedom():
    result = stats.difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # Each side: variance 1, n 3, so s²/n = 1/3; SE² = 2/3, SE = 0.8164965809.
    # df = (2/3)² / ((1/3)²/2 + (1/3)²/2) = (4/9) / (1/9) = 4; t(0.975, 4) = 2.7764451052.
    # Half-width 2.7764451052 × 0.8164965809 = 2.2669579355.
    assert result.mean == pytest.approx(3.0)
    assert result.std_error == pytest.approx(0.8164965809)
    assert result.df == pytest.approx(4.0)
    assert result.ci_low == pytest.approx(3.0 - 2.2669579355)
    assert result.ci_high == pytest.approx(3.0 + 2.2669579355)


def test_welch_difference_with_unequal_spreads_uses_satterthwaite_degrees_of_freedom():
    result = stats.difference([1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0])
    # a: mean 2, variance 1, n 3 → 1/3.  b: mean 5, variance (9+1+1+9)/3 = 20/3, n 4 → 5/3.
    # SE² = 1/3 + 5/3 = 2, SE = √2.  df = 2² / ((1/3)²/2 + (5/3)²/3) = 4 / (53/54) = 216/53.
    # t(0.975, 216/53 ≈ 4.0755) = 2.7562848744 (from a t table); half-width × √2 = 3.8979754511.
    assert result.mean == pytest.approx(3.0)
    assert result.std_error == pytest.approx(math.sqrt(2))
    assert result.df == pytest.approx(216 / 53)
    assert result.ci_low == pytest.approx(3.0 - 3.8979754511)
    assert result.ci_high == pytest.approx(3.0 + 3.8979754511)


def test_difference_without_a_second_value_on_one_side_has_no_interval():
    result = stats.difference([1.0], [2.0, 4.0])
    assert result.mean == pytest.approx(2.0)
    assert (result.ci_low, result.ci_high, result.std_error) == (None, None, None)
    assert stats.difference([], [1.0, 2.0]) is None


def test_matched_difference_pools_contexts_with_welch_satterthwaite():
    result = stats.matched_difference(
        [
            # Differences 0.85 − 0.81 = 0.04; s_a² = s_b² = 0.0002, n 2 → 0.0001 + 0.0001.
            ([0.80, 0.82], [0.84, 0.86]),
            # Differences 0.77 − 0.72 = 0.05; s_a² = 0.0008 → 0.0004, s_b² = 0.0002 → 0.0001.
            ([0.70, 0.74], [0.76, 0.78]),
        ]
    )
    # Effect (0.04 + 0.05)/2 = 0.045; SE = √(0.0002 + 0.0005)/2 = 0.0132287566.
    # df = 0.0007² / (0.0001² + 0.0001² + 0.0004² + 0.0001²) (each n − 1 = 1) = 49/19.
    # t(0.975, 49/19 ≈ 2.5789) = 3.4975662457; half-width × 0.0132287566 = 0.0462684524.
    assert result.mean == pytest.approx(0.045)
    assert result.std_error == pytest.approx(0.0132287566)
    assert result.df == pytest.approx(49 / 19)
    assert result.ci_low == pytest.approx(0.045 - 0.0462684524)
    assert result.ci_high == pytest.approx(0.045 + 0.0462684524)


def test_matched_difference_with_single_runs_falls_back_to_the_spread_of_context_differences():
    result = stats.matched_difference([([10.0], [11.0]), ([10.0], [13.0]), ([20.0], [22.0])])
    # Differences 1, 3, 2: mean 2, std 1, k 3 → SE 1/√3, df 2.
    # t(0.975, 2) = 4.302652729749464; half-width 4.302652729749464/√3 = 2.4841377118.
    assert result.mean == pytest.approx(2.0)
    assert result.df == 2
    assert result.ci_low == pytest.approx(2.0 - 2.4841377118)
    assert result.ci_high == pytest.approx(2.0 + 2.4841377118)


def test_matched_difference_with_one_context_of_single_runs_has_no_interval():
    result = stats.matched_difference([([10.0], [11.0]), ([], [5.0])])
    assert result.mean == pytest.approx(1.0)
    assert (result.ci_low, result.ci_high) == (None, None)


# --- per-run metrics ---


def test_steady_seconds_per_epoch_is_the_median_from_the_second_epoch():
    assert stats.steady_seconds_per_epoch(make_run({}, seconds=(5.0, 2.0, 4.0, 3.0))) == 3.0
    assert stats.steady_seconds_per_epoch(make_run({}, seconds=(5.0,))) is None


def test_timing_metrics_of_one_run():
    run = make_run({}, seconds=(5.0, 2.0, 4.0))
    assert stats.first_epoch_seconds(run) == 5.0
    assert stats.epochs_run(run) == 3
    assert stats.training_seconds(run) == 11.0
    assert stats.training_seconds(make_run({}, seconds=())) is None


def test_seconds_to_threshold_counts_up_to_the_epoch_that_meets_the_rule():
    epochs = epoch_results((5.0, 2.0, 4.0), losses=[0.9, 0.5, 0.3], accuracies=[0.6, 0.8, 0.9])
    by_loss = make_run({}, epochs=epochs, stop_metric="loss", stop_threshold=0.5)
    by_accuracy = make_run({}, epochs=epochs, stop_metric="accuracy", stop_threshold=0.85)
    never = make_run({}, epochs=epochs, stop_metric="loss", stop_threshold=0.1)
    missing = make_run({}, epochs=epochs, stop_metric="val_accuracy", stop_threshold=0.5)
    # Loss 0.5 <= 0.5 at epoch 2: 5 + 2 seconds.  Accuracy 0.9 >= 0.85 at epoch 3: 5 + 2 + 4.
    assert stats.seconds_to_threshold(by_loss) == 7.0
    assert stats.seconds_to_threshold(by_accuracy) == 11.0
    assert stats.seconds_to_threshold(never) is None
    assert stats.seconds_to_threshold(missing) is None
    assert stats.seconds_to_threshold(make_run({}, epochs=epochs)) is None


def test_train_test_gap_is_last_training_accuracy_minus_test_accuracy():
    epochs = epoch_results((1.0, 1.0), accuracies=[0.8, 0.95])
    assert stats.train_test_gap(make_run({}, epochs=epochs, accuracy=0.9)) == pytest.approx(0.05)
    assert stats.train_test_gap(make_run({}, epochs=epochs, accuracy=None)) is None


# --- variant summaries ---


def test_variants_keep_input_order_split_by_device_and_exclude_failed_runs():
    runs = [
        make_run({"filters": 64}, accuracy=0.90),
        make_run({"filters": 32}, accuracy=0.85),
        make_run({"filters": 64}, accuracy=0.92),
        make_run({"filters": 64}, status="failed", accuracy=0.10, seconds=(50.0, 50.0)),
        make_run({"filters": 64}, status="pruned", accuracy=None, seconds=(9.0,)),
        make_run({"filters": 64}, device="gpu", accuracy=0.91),
    ]
    variants = summarize_variants(runs)
    assert [(v.params, v.device) for v in variants] == [
        ({"filters": 64}, "cpu"),
        ({"filters": 32}, "cpu"),
        ({"filters": 64}, "gpu"),
    ]
    first = variants[0]
    assert (first.runs, first.failed, first.pruned) == (2, 1, 1)
    assert first.test_accuracy.mean == pytest.approx(0.91)
    assert first.test_accuracy.n == 2
    # Both succeeded runs took 2 + 1 + 1 seconds; the failed run's 100 seconds stay out.
    assert first.training_seconds.mean == pytest.approx(4.0)
    assert first.seconds_per_epoch.mean == pytest.approx(1.0)


def test_a_variant_whose_runs_all_failed_has_no_statistics():
    (variant,) = summarize_variants([make_run({"filters": 8}, status="failed", accuracy=None)])
    assert variant.runs == 0
    assert variant.test_accuracy is None
    assert variant.training_seconds is None


# --- Pareto fronts ---


def summary(name: str, accuracy: float | None, total_params: int, seconds: float | None):
    def point(value: float | None) -> Estimate | None:
        return None if value is None else Estimate(value, None, None, None, 1)

    return VariantSummary(
        variant=name,
        device="cpu",
        params={"name": name},
        total_params=total_params,
        flatten_size=0,
        activation_bytes_per_batch=0,
        runs=1,
        pruned=0,
        failed=0,
        test_accuracy=point(accuracy),
        test_loss=None,
        seconds_per_epoch=None,
        first_epoch_seconds=None,
        epochs_run=None,
        seconds_to_threshold=None,
        train_test_gap=None,
        training_seconds=point(seconds),
    )


def brute_force_front(points: list[tuple[str, float, float]]) -> set[str]:
    def dominates(p, q):
        return p[1] >= q[1] and p[2] <= q[2] and (p[1] > q[1] or p[2] < q[2])

    return {q[0] for q in points if not any(dominates(p, q) for p in points)}


def test_pareto_front_of_a_small_example():
    variants = [
        summary("small", 0.85, 100, 10.0),
        summary("large", 0.90, 400, 30.0),
        summary("wasteful", 0.84, 200, 5.0),
        summary("twin", 0.85, 100, 10.0),
        summary("unfinished", None, 50, None),
    ]
    front = pareto(variants, "total_params")
    assert [(p["variant"], p["total_params"]) for p in front] == [
        ("small", 100),
        ("twin", 100),
        ("large", 400),
    ]
    assert front[0] == {
        "variant": "small",
        "device": "cpu",
        "params": {"name": "small"},
        "test_accuracy": 0.85,
        "total_params": 100,
    }
    by_time = [p["variant"] for p in pareto(variants, "training_seconds")]
    assert by_time == ["wasteful", "small", "twin", "large"]


def plain_cost(variant: VariantSummary, cost: str) -> float | None:
    if cost == "total_params":
        return variant.total_params
    return None if variant.training_seconds is None else variant.training_seconds.mean


@pytest.mark.parametrize("cost", ["total_params", "training_seconds"])
def test_pareto_front_matches_brute_force_on_random_ties(cost):
    rng = random.Random(20240611)
    for _ in range(500):
        variants = [
            summary(
                f"v{index}",
                rng.choice([0.80, 0.85, 0.85, 0.90, 0.95, None]),
                rng.choice([100, 200, 200, 300, 400]),
                rng.choice([1.0, 2.0, 2.0, 3.0, None]),
            )
            for index in range(rng.randint(1, 12))
        ]
        points = [
            (v.variant, v.test_accuracy.mean, plain_cost(v, cost))
            for v in variants
            if v.test_accuracy is not None and plain_cost(v, cost) is not None
        ]
        front = pareto(variants, cost)
        assert {p["variant"] for p in front} == brute_force_front(points)
        costs = [p[cost] for p in front]
        assert costs == sorted(costs)


# --- effects ---


def grid_runs() -> list[StudyRun]:
    """filters × conv_layers × 3 repeats: 64 filters +0.8 pt at twice the time, 2 layers +0.5 pt."""
    runs = []
    for conv_layers, base in ((1, 0.880), (2, 0.885)):
        for filters, gain, seconds in ((32, 0.0, (1.5, 1.0, 1.0)), (64, 0.008, (3.0, 2.0, 2.0))):
            for repeat, offset in enumerate((-0.001, 0.0, 0.001)):
                params = {"conv_layers": conv_layers, "filters": filters}
                runs.append(
                    make_run(params, repeat=repeat, accuracy=base + gain + offset, seconds=seconds)
                )
    return runs


def test_a_clear_gain_reads_as_a_plus_with_an_interval_that_excludes_zero():
    by_field = {effect.field: effect for effect in effects(grid_runs(), ["filters", "conv_layers"])}
    filters = by_field["filters"]
    assert (filters.from_value, filters.to_value, filters.contexts) == (32, 64, 2)
    # In points: each cell's std is 0.1, s²/n = 0.01/3; SE = √(4 × 0.01/3)/2 = 0.0577350269.
    # df = (0.04/3)² / (4 × (0.01/3)²/2) = 8; t(0.975, 8) = 2.3060041352 → half-width 0.1331375.
    assert filters.accuracy_points.mean == pytest.approx(0.8)
    assert filters.accuracy_points.df == pytest.approx(8.0)
    assert filters.accuracy_points.ci_low == pytest.approx(0.8 - 0.1331375, abs=1e-6)
    assert filters.accuracy_points.ci_high == pytest.approx(0.8 + 0.1331375, abs=1e-6)
    # Steady seconds 2.0 against 1.0 in every run.
    assert filters.seconds_per_epoch.mean == pytest.approx(1.0)
    assert filters.time_ratio == pytest.approx(2.0)
    assert (
        filters.verdict == "64 vs 32 filters: +0.8 pt (95% CI +0.7 to +0.9), ×2.00 time per epoch"
    )
    assert by_field["conv_layers"].verdict == (
        "2 vs 1 conv_layers: +0.5 pt (95% CI +0.4 to +0.6), ×1.00 time per epoch"
    )


def test_noise_reads_as_no_clear_difference():
    runs = [make_run({"dropout": 0.0}, accuracy=a) for a in (0.881, 0.874, 0.886, 0.879)]
    runs += [make_run({"dropout": 0.2}, accuracy=a) for a in (0.877, 0.888, 0.872, 0.884)]
    (effect,) = effects(runs, ["dropout"])
    assert effect.accuracy_points.ci_low < 0 < effect.accuracy_points.ci_high
    assert effect.verdict.startswith(
        "0.2 vs 0.0 dropout: no clear difference in accuracy (95% CI −"
    )
    assert effect.verdict.endswith(" pt), ×1.00 time per epoch")


def test_a_clear_loss_reads_as_a_minus():
    runs = [make_run({"dropout": 0.0}, accuracy=a) for a in (0.900, 0.901, 0.902)]
    runs += [make_run({"dropout": 0.5}, accuracy=a) for a in (0.880, 0.881, 0.882)]
    (effect,) = effects(runs, ["dropout"])
    assert effect.verdict.startswith("0.5 vs 0.0 dropout: −2.0 pt (95% CI −")


def test_effects_compare_neighbouring_numbers_by_value():
    runs = [make_run({"filters": value}) for value in (64, 16, 32)]
    pairs = [(e.from_value, e.to_value) for e in effects(runs, ["filters"])]
    assert pairs == [(16, 32), (32, 64)]


def test_effects_order_lists_by_their_canonical_json():
    runs = [make_run({"dense_units": value}) for value in ([128], [64, 32], [32])]
    found = effects(runs, ["dense_units"])
    # The strings "[128]" < "[32]" < "[64,32]", whatever the numbers inside.
    assert [(e.from_value, e.to_value) for e in found] == [([128], [32]), ([32], [64, 32])]
    assert found[1].verdict.startswith("[64,32] vs [32] dense_units: ")


def test_single_repeats_in_several_contexts_use_the_spread_of_their_differences():
    runs = []
    for conv_layers, small, large in ((1, 0.80, 0.81), (2, 0.80, 0.83), (3, 0.80, 0.82)):
        runs.append(make_run({"conv_layers": conv_layers, "filters": 32}, accuracy=small))
        runs.append(make_run({"conv_layers": conv_layers, "filters": 64}, accuracy=large))
    by_field = {e.field: e for e in effects(runs, ["conv_layers", "filters"])}
    filters = by_field["filters"]
    # Differences 1, 3, 2 points: mean 2, std 1, df 2; half-width 4.302652729749464/√3.
    assert filters.contexts == 3
    assert filters.accuracy_points.mean == pytest.approx(2.0)
    assert filters.accuracy_points.df == 2
    assert filters.accuracy_points.ci_low == pytest.approx(2.0 - 2.4841377118)
    assert filters.verdict.startswith("64 vs 32 filters: no clear difference in accuracy")


def test_a_single_repeat_in_a_single_context_is_not_enough_to_tell():
    runs = [make_run({"filters": 32}, accuracy=0.80), make_run({"filters": 64}, accuracy=0.85)]
    (effect,) = effects(runs, ["filters"])
    assert effect.accuracy_points.mean == pytest.approx(5.0)
    assert effect.accuracy_points.ci_low is None
    assert effect.verdict == (
        "64 vs 32 filters: not enough repeats to tell (run repeats ≥ 2), ×1.00 time per epoch"
    )


def test_failed_runs_do_not_enter_effects():
    runs = [make_run({"filters": 32}, accuracy=a) for a in (0.80, 0.81)]
    runs += [make_run({"filters": 64}, accuracy=a) for a in (0.82, 0.83)]
    runs += [make_run({"filters": 64}, status="failed", accuracy=0.10)]
    runs += [make_run({"filters": 128}, status="failed", accuracy=0.99)]
    (effect,) = effects(runs, ["filters"])
    assert (effect.from_value, effect.to_value) == (32, 64)
    assert effect.accuracy_points.mean == pytest.approx(2.0)


def test_devices_are_separate_contexts():
    runs = []
    for device, offset in (("cpu", 0.0), ("gpu", 0.02)):
        runs.append(make_run({"filters": 32}, device=device, accuracy=0.80 + offset))
        runs.append(make_run({"filters": 64}, device=device, accuracy=0.81 + offset))
    (effect,) = effects(runs, ["filters"])
    assert effect.contexts == 2
    assert effect.accuracy_points.mean == pytest.approx(1.0)


# --- speedup and the whole comparison ---


def test_speedup_divides_cpu_time_by_gpu_time_for_variants_on_both_devices():
    runs = [
        make_run({"filters": 32}, device="cpu", seconds=(5.0, 4.0, 4.0)),
        make_run({"filters": 32}, device="gpu", seconds=(1.0, 0.5, 0.5)),
        make_run({"filters": 64}, device="cpu", seconds=(5.0, 4.0, 4.0)),
    ]
    (result,) = speedup(summarize_variants(runs))
    assert result.params == {"filters": 32}
    assert (result.cpu_seconds_per_epoch, result.gpu_seconds_per_epoch) == (4.0, 0.5)
    assert result.speedup == pytest.approx(8.0)
    # Training: 5 + 4 + 4 = 13 seconds against 1 + 0.5 + 0.5 = 2.
    assert (result.cpu_training_seconds, result.gpu_training_seconds) == (13.0, 2.0)
    assert result.training_speedup == pytest.approx(6.5)
    assert speedup(summarize_variants(runs[:1] + runs[2:])) == []


def test_compare_gathers_everything_as_plain_json():
    result = compare(grid_runs(), ["filters", "conv_layers"])
    assert len(result.variants) == 4
    assert set(result.pareto) == {"accuracy_vs_params", "accuracy_vs_training_seconds"}
    assert [e.field for e in result.effects] == ["filters", "conv_layers"]
    assert result.speedup == []
    json.dumps(dataclasses.asdict(result), allow_nan=False)
