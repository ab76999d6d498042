"""The statistics of a study's numbers, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from kdlightning.stats import (
    Interval,
    bootstrap_average_improvement,
    bootstrap_relative_improvement,
    mean_interval,
    paired_difference,
    rank,
)

T_975_2 = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom (tables)
T_975_3 = 3.182446  # with 3
T_95_2 = 2.919986  # quantile 0.95 with 2


# ---------------------------------------------------------------------------------------------------------- Interval


def test_an_interval_prints_its_mean_and_bounds_and_tells_zero_and_overlap() -> None:
    interval = Interval(mean=2.64, low=-1.2, high=6.48, n=3)
    assert str(interval) == "+2.64 [-1.20, +6.48]"
    assert interval.format(1, "%") == "+2.6% [-1.2%, +6.5%]"
    assert not interval.excludes_zero
    assert Interval(1.0, 0.5, 1.5, 3).excludes_zero
    assert Interval(-1.0, -1.5, -0.5, 3).excludes_zero
    assert interval.overlaps(Interval(7.0, 6.48, 8.0, 3))  # touching counts as overlapping
    assert not interval.overlaps(Interval(7.0, 6.5, 8.0, 3))
    assert not Interval(7.0, 6.5, 8.0, 3).overlaps(interval)


def test_an_interval_without_bounds_overlaps_everything_and_excludes_nothing() -> None:
    single = Interval(2.0, math.nan, math.nan, 1)
    assert str(single) == "+2.00 [no interval]"
    assert not single.has_bounds and not single.excludes_zero
    assert single.overlaps(Interval(100.0, 99.0, 101.0, 5))


def test_an_interval_from_fewer_than_3_seeds_or_without_spread_is_no_evidence() -> None:
    two = mean_interval([1.0, 3.0])
    flat = mean_interval([0.62 - 0.60, 0.63 - 0.61, 0.64 - 0.62])  # one difference three times, up to rounding
    assert not flat.excludes_zero and not Interval(2.0, 1.9, 2.1, 2).excludes_zero
    assert Interval(2.0, 1.9, 2.1, 3).excludes_zero
    # never clearly ahead on such intervals, though they do not overlap
    for weak in (Interval(5.0, 5.0, 5.0, 5), Interval(5.0, 4.5, 5.5, 2)):
        ranking = rank({"a": weak, "b": Interval(1.0, 0.5, 1.5, 5)})
        assert [(r.name, r.group, r.clearly_ahead_of_next) for r in ranking] == [("a", 1, False), ("b", 1, None)]
    assert two.why_not_evidence == "2 seeds: too few for an interval" and not two.is_evidence
    assert flat.why_not_evidence == "no spread across seeds: not evidence" and not flat.is_evidence
    assert Interval(2.0, 1.9, 2.1, 3).is_evidence and Interval(2.0, 1.9, 2.1, 3).why_not_evidence == ""


# ----------------------------------------------------------------------------------------------------- mean_interval


def test_mean_interval_of_one_two_three() -> None:
    interval = mean_interval([1, 2, 3])  # mean 2, sample sd 1, standard error 1 / sqrt(3)
    half_width = T_975_2 * 1 / math.sqrt(3)
    assert half_width == pytest.approx(2.4841, abs=1e-4)
    assert (interval.mean, interval.n) == (2.0, 3)
    assert interval.low == pytest.approx(2 - half_width, abs=1e-6)
    assert interval.high == pytest.approx(2 + half_width, abs=1e-6)


def test_mean_interval_at_another_confidence_and_from_strings() -> None:
    interval = mean_interval(["1", "2", "3"], confidence=0.9)
    assert interval.high - interval.mean == pytest.approx(T_95_2 / math.sqrt(3), abs=1e-6)


def test_mean_interval_of_one_value_has_no_bounds_and_of_equal_values_no_width() -> None:
    single = mean_interval([5.0])
    assert single.mean == 5.0 and single.n == 1 and math.isnan(single.low) and math.isnan(single.high)
    assert mean_interval([2.0, 2.0, 2.0]) == Interval(2.0, 2.0, 2.0, 3)


@pytest.mark.parametrize(
    ("values", "confidence", "flag"),
    [([], 0.95, "values"), ([1.0, 2.0], 1.0, "confidence"), ([1.0, 2.0], 0.0, "confidence"), ([1.0], True, "conf")],
)
def test_mean_interval_refuses_bad_arguments(values: list, confidence: float, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        mean_interval(values, confidence)


# ------------------------------------------------------------------------------------------------- paired_difference


def test_paired_difference_computed_by_hand() -> None:
    result = paired_difference([3, 5, 4, 6], [1, 4, 4, 2])
    # differences 2, 1, 0, 4: mean 1.75; squared deviations 0.0625 + 0.5625 + 3.0625 + 5.0625 = 8.75
    standard_error = math.sqrt(8.75 / 3) / math.sqrt(4)
    assert result.n == 4
    assert result.difference.mean == pytest.approx(1.75)
    assert result.difference.high - 1.75 == pytest.approx(T_975_3 * standard_error, abs=1e-6)
    assert result.difference.low == pytest.approx(1.75 - T_975_3 * standard_error, abs=1e-6)
    assert result.win_rate == pytest.approx((3 + 0.5) / 4)  # three wins and a tie
    # Wilcoxon drops the zero: 3 positive differences, exact two-sided p = 2 / 2**3
    assert result.p_value == pytest.approx(0.25)


def test_wilcoxon_p_values_computed_by_hand() -> None:
    # five positive differences: only the all-positive and all-negative sign patterns are as extreme, 2 / 2**5
    assert paired_difference([2, 3, 4, 5, 6], [1, 1, 1, 1, 1]).p_value == pytest.approx(0.0625)
    # differences 1, 2, 3, 4, -5: W- = 5; 10 of the 32 sign patterns have W+ <= 5, so p = 2 * 10 / 32
    assert paired_difference([1, 2, 3, 4, -5], [0, 0, 0, 0, 0]).p_value == pytest.approx(0.625)


def test_paired_difference_is_antisymmetric() -> None:
    a, b = [3.0, 5.0, 4.0, 6.0], [1.0, 4.0, 4.5, 2.0]
    forward, backward = paired_difference(a, b), paired_difference(b, a)
    assert backward.difference.mean == pytest.approx(-forward.difference.mean)
    assert backward.difference.low == pytest.approx(-forward.difference.high)
    assert backward.p_value == pytest.approx(forward.p_value)
    assert backward.win_rate == pytest.approx(1 - forward.win_rate)


def test_paired_difference_of_equal_values_and_of_one_seed() -> None:
    same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.difference == Interval(0.0, 0.0, 0.0, 3)
    assert same.p_value == 1.0 and same.win_rate == 0.5
    one = paired_difference([2.0], [1.0])
    assert one.difference.mean == 1.0 and not one.difference.has_bounds
    assert math.isnan(one.p_value) and one.win_rate == 1.0


def test_paired_difference_needs_one_value_per_seed_each() -> None:
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="`a`"):
        paired_difference([], [])


# ------------------------------------------------------------------------------------------------------- bootstrap

TUNED = [1.2, 1.0, 1.4]
UNTUNED = {"vanilla_kd": [1.0, 0.9, 1.1], "dml": [0.5, 1.2, 0.7]}


def test_bootstrap_point_estimate_is_the_figure_on_the_data() -> None:
    # tuned mean 1.2; untuned means 1.0 (vanilla_kd) and 0.8 (dml): 100 * (1.2 - 1.0) / 1.0
    assert bootstrap_relative_improvement(TUNED, UNTUNED).mean == pytest.approx(20.0)
    # over a negative best: |best| in the denominator, so beating it is positive
    assert bootstrap_relative_improvement([-0.5, -0.5], {"a": [-1.0, -1.0]}).mean == pytest.approx(50.0)


def test_bootstrap_is_reproducible_and_contains_its_point_estimate() -> None:
    interval = bootstrap_relative_improvement(TUNED, UNTUNED, seed=3)
    assert interval == bootstrap_relative_improvement(TUNED, UNTUNED, seed=3)
    assert interval.low <= interval.mean <= interval.high
    assert interval.n == 3
    others = {bootstrap_relative_improvement(TUNED, UNTUNED, n_resamples=50, seed=seed) for seed in range(5)}
    assert len(others) > 1  # the seed drives the resampling


def test_bootstrap_resamples_seeds_jointly_and_chooses_the_best_again_each_time() -> None:
    # Two seeds: a resample is seeds (0, 0) w.p. 1/4, (1, 1) w.p. 1/4, or one of each w.p. 1/2.
    # (0, 0): best is a (1.0) -> +100%; (1, 1): best is b (1.5) -> +33.3%; mixed: best is b (0.75) -> +166.7%.
    # Were b kept as the best of the data, (0, 0) would give b = 0 and an infinite figure.
    interval = bootstrap_relative_improvement([2.0, 2.0], {"a": [1.0, 0.0], "b": [0.0, 1.5]})
    assert interval.mean == pytest.approx(100 * (2.0 - 0.75) / 0.75)
    assert interval.low == pytest.approx(100 * (2.0 - 1.5) / 1.5)
    assert interval.high == pytest.approx(100 * (2.0 - 0.75) / 0.75)


def test_bootstrap_edge_cases() -> None:
    single = bootstrap_relative_improvement([1.5], {"a": [1.0]})
    assert single.mean == pytest.approx(50.0) and not single.has_bounds
    assert bootstrap_relative_improvement([1.0, 1.0], {"a": [0.0, 0.0]}).mean == math.inf
    with pytest.raises(ValueError, match="one value per seed"):
        bootstrap_relative_improvement([1.0, 2.0], {"a": [1.0]})
    with pytest.raises(ValueError, match="at least one method"):
        bootstrap_relative_improvement([1.0, 2.0], {})
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_relative_improvement([1.0, 2.0], {"a": [1.0, 2.0]}, n_resamples=0)


def test_the_average_over_scenarios_and_its_median() -> None:
    scenarios = [
        ([1.2, 1.0, 1.4], {"a": [1.0, 0.9, 1.1]}),  # +20%
        ([0.6, 0.4, 0.5], {"a": [0.2, 0.3, 0.1]}),  # +150%
        ([1.0, 1.0, 1.0], {"a": [1.0, 1.0, 1.0]}),  # +0%
    ]
    mean = bootstrap_average_improvement(scenarios)
    median = bootstrap_average_improvement(scenarios, "median")
    assert mean.mean == pytest.approx((20 + 150 + 0) / 3) and mean.n == 3
    assert median.mean == pytest.approx(20.0)
    assert mean.low <= mean.mean <= mean.high and median.low <= median.mean <= median.high
    assert mean == bootstrap_average_improvement(scenarios)
    assert not bootstrap_average_improvement([*scenarios, ([1.0], {"a": [0.5]})]).has_bounds  # one seed: no interval
    with pytest.raises(ValueError, match="average"):
        bootstrap_average_improvement(scenarios, "mode")  # type: ignore[arg-type]


def test_the_average_over_one_scenario_is_that_scenario_s_figure_with_its_interval() -> None:
    scenario = ([1.2, 1.0, 1.4], {"a": [1.0, 0.9, 1.1], "b": [0.5, 1.2, 0.7]})
    alone = bootstrap_relative_improvement(*scenario)
    for average in ("mean", "median"):
        interval = bootstrap_average_improvement([scenario], average)
        assert interval.has_bounds
        assert (interval.mean, interval.low, interval.high) == (alone.mean, alone.low, alone.high)


# ------------------------------------------------------------------------------------------------------------ rank


def test_rank_splits_where_intervals_do_not_overlap() -> None:
    ranking = rank({"b": Interval(0.5, 0.0, 1.0, 5), "a": Interval(4.0, 3.0, 5.0, 5)})
    assert [(r.name, r.group, r.clearly_ahead_of_next) for r in ranking] == [("a", 1, True), ("b", 2, None)]


def test_rank_joins_neighbours_whose_intervals_overlap_along_a_chain() -> None:
    ranking = rank(
        {
            "c": Interval(1.5, 0.5, 2.5, 5),
            "a": Interval(4.0, 3.0, 5.0, 5),
            "b": Interval(3.0, 2.0, 4.0, 5),
            "d": Interval(-3.0, -4.0, -2.0, 5),
        }
    )
    # a and c do not overlap, but a ~ b and b ~ c: one group; d is clearly below c
    assert [(r.name, r.group, r.clearly_ahead_of_next) for r in ranking] == [
        ("a", 1, False),
        ("b", 1, False),
        ("c", 1, True),
        ("d", 2, None),
    ]


def test_rank_orders_ties_by_name_and_no_interval_tells_nothing_apart() -> None:
    ranking = rank(
        {"z": Interval(1.0, 0.9, 1.1, 5), "y": Interval(1.0, 0.9, 1.1, 5), "x": Interval(9.0, math.nan, math.nan, 1)}
    )
    assert [r.name for r in ranking] == ["x", "y", "z"]
    assert {r.group for r in ranking} == {1}
    assert rank({}) == []
