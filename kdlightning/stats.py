r"""The uncertainty of a study's numbers over seeds: intervals, paired comparisons, bootstrap, ranking.

Pure functions of per-seed values (numpy and scipy only): a study's seeds are its independent
repetitions, so every statistic here is taken over seeds.

- :func:`mean_interval`: the mean and its Student-t confidence interval.
- :func:`paired_difference`: two methods run on the *same* seeds (same partition, same pre-trained
  student), compared seed by seed: the interval of the mean difference, the Wilcoxon signed-rank
  p-value and the win rate.
- :func:`bootstrap_relative_improvement`: the study's metric (tuned KD's gain relative to the best
  untuned method's) with a percentile bootstrap interval, seeds resampled jointly across methods;
  :func:`bootstrap_average_improvement` averages it over scenarios.
- :func:`rank`: methods ordered by mean, with neighbours whose intervals overlap marked as no clear
  difference.

An interval is evidence only where it rests on at least :data:`MIN_SEEDS` seeds and has some spread
(:attr:`Interval.why_not_evidence`): two seeds give a t-interval whose width rests on a single degree of freedom,
and identical values give one of no width, which says nothing about the spread over seeds. Such an interval never
excludes 0 and never tells two methods apart.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as scipy_stats

from kdlightning.errors import ConfigurationError

__all__ = [
    "MIN_SEEDS",
    "Interval",
    "PairedDifference",
    "Ranked",
    "bootstrap_average_improvement",
    "bootstrap_relative_improvement",
    "mean_interval",
    "paired_difference",
    "rank",
]

MIN_SEEDS = 3
"""The fewest values (seeds) an interval must rest on to count as evidence."""

NO_SPREAD = 1e-9
"""An interval narrower than this, relative to its mean (at least 1), has no spread: its values were all alike."""

Values = npt.ArrayLike
"""Per-seed values: a sequence of numbers (strings of numbers too, as read from a CSV file)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval ``[low, high]``, from ``n`` values.

    ``low`` and ``high`` are nan where there is no interval (a single value). ``str`` shows the mean and the bounds
    with two decimals and a sign, or ``[no interval]``.

    Examples:
        >>> interval = Interval(mean=2.64, low=-1.2, high=6.48, n=3)
        >>> str(interval), interval.excludes_zero
        ('+2.64 [-1.20, +6.48]', False)
        >>> interval.overlaps(Interval(6.0, 5.5, 6.5, 3)), interval.overlaps(Interval(9.0, 8.0, 10.0, 3))
        (True, False)
        >>> str(Interval(2.0, math.nan, math.nan, 1))
        '+2.00 [no interval]'
    """

    mean: float
    """The point estimate (for a mean interval, the mean of the values)."""
    low: float
    """The lower bound; nan without an interval."""
    high: float
    """The upper bound; nan without an interval."""
    n: int
    """How many values (seeds) the estimate rests on."""

    @property
    def has_bounds(self) -> bool:
        """Whether the interval exists (neither bound is nan)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def why_not_evidence(self) -> str:
        """Why the interval is no evidence, in words; ``""`` where it is.

        An interval is evidence where it rests on at least :data:`MIN_SEEDS` values and has some spread.

        Examples:
            >>> Interval(2.0, math.nan, math.nan, 1).why_not_evidence
            'one seed: no interval'
            >>> Interval(2.0, 1.0, 3.0, 2).why_not_evidence
            '2 seeds: too few for an interval'
            >>> Interval(2.0, 2.0, 2.0, 5).why_not_evidence
            'no spread across seeds: not evidence'
            >>> Interval(2.0, 1.0, 3.0, 3).why_not_evidence
            ''
        """
        if not self.has_bounds:
            return "one seed: no interval" if self.n <= 1 else "no interval"
        if self.n < MIN_SEEDS:
            return f"{self.n} seeds: too few for an interval"
        if self.high - self.low <= NO_SPREAD * max(1.0, abs(self.mean)):
            return "no spread across seeds: not evidence"
        return ""

    @property
    def is_evidence(self) -> bool:
        """Whether the interval is evidence: from at least :data:`MIN_SEEDS` values, with some spread."""
        return not self.why_not_evidence

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside ``[low, high]``: the estimate is clearly positive or clearly negative.

        False where the interval is no evidence (:attr:`why_not_evidence`).
        """
        return self.is_evidence and (self.low > 0 or self.high < 0)

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share a point; True where either has no interval (nothing tells them apart)."""
        if not (self.has_bounds and other.has_bounds):
            return True
        return self.low <= other.high and other.low <= self.high

    def format(self, digits: int = 2, unit: str = "") -> str:
        """``mean [low, high]`` with ``digits`` decimals, a sign, and ``unit`` after each number (e.g. ``"%"``).

        Examples:
            >>> Interval(21.2, -30.05, 80.0, 3).format(1, "%")
            '+21.2% [-30.1%, +80.0%]'
        """
        mean = f"{self.mean:+.{digits}f}{unit}"
        if not self.has_bounds:
            return f"{mean} [no interval]"
        return f"{mean} [{self.low:+.{digits}f}{unit}, {self.high:+.{digits}f}{unit}]"

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class PairedDifference:
    """Two methods compared seed by seed: see :func:`paired_difference`."""

    difference: Interval
    """The mean of the per-seed differences ``a - b`` and its t-interval; ``n`` is the number of pairs."""
    p_value: float
    """Two-sided p-value of the Wilcoxon signed-rank test that the differences are centred on 0."""
    win_rate: float
    """Share of seeds where ``a > b``, a tie counting half."""

    @property
    def n(self) -> int:
        """The number of pairs (seeds)."""
        return self.difference.n


@dataclass(frozen=True)
class Ranked:
    """One place of a ranking: see :func:`rank`."""

    name: str
    """The method."""
    interval: Interval
    """Its interval."""
    group: int
    """1 for the first method; one more than the previous method's where this one is clearly below it (their
    intervals do not overlap, and both are evidence), the same group where there is no clear difference."""
    clearly_ahead_of_next: bool | None
    """Whether its interval lies wholly above the next method's, both being evidence; None for the last."""


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ConfigurationError(f"`confidence` must be a number in (0, 1), got {confidence!r}.")
    return float(confidence)


def _as_array(values: Values, name: str) -> npt.NDArray[np.float64]:
    """``values`` as a 1-d float64 array with at least one element, or ``ValueError`` naming ``name``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ConfigurationError(f"`{name}` must be a non-empty sequence of numbers, got {values!r}.")
    return array


def mean_interval(values: Values, confidence: float = 0.95) -> Interval:
    r"""The mean of ``values`` and its Student-t confidence interval.

    .. math::
        \bar x \pm t_{(1 + c)/2,\, n - 1} \cdot \frac{s}{\sqrt n}

    where :math:`s` is the sample standard deviation (``ddof=1``) and :math:`c` the confidence. The interval
    assumes the values are independent draws (seeds are) and that their mean is about normally distributed.

    Args:
        values: the per-seed values, ``(n,)``.
        confidence: the interval's coverage, in ``(0, 1)``.

    Returns:
        The interval; with a single value ``low`` and ``high`` are nan (one seed says nothing about the spread).

    Raises:
        ValueError: ``values`` is empty, or ``confidence`` is not in ``(0, 1)``.

    Examples:
        >>> interval = mean_interval([1, 2, 3])  # mean 2, sd 1, t(0.975, 2) = 4.3027
        >>> str(interval), round(interval.high - interval.mean, 4)
        ('+2.00 [-0.48, +4.48]', 2.4841)
        >>> mean_interval([5.0])
        Interval(mean=5.0, low=nan, high=nan, n=1)
    """
    confidence = _check_confidence(confidence)
    array = _as_array(values, "values")
    mean, n = float(array.mean()), int(array.size)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half_width = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half_width, mean + half_width, n)


def paired_difference(a: Values, b: Values, confidence: float = 0.95) -> PairedDifference:
    """Compare two methods seed by seed: ``a[i]`` and ``b[i]`` come from the same seed.

    Pairing removes what a seed shares between the methods (its partition, its pre-trained student): the
    differences ``a - b`` vary far less over seeds than either method's values, so an interval on them is narrower
    than one read from the two methods' separate intervals.

    - the difference: the mean of ``a - b`` and its t-interval (:func:`mean_interval`);
    - the p-value: two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact for small samples),
      which assumes no normality. Zero differences are dropped, as in Wilcoxon's test. With fewer than 2 pairs it
      is nan (no test); where every difference is 0 it is 1.0 (no sign of a difference);
    - the win rate: the share of seeds where ``a > b``, a tie counting half.

    Args:
        a: per-seed values of the first method, ``(n,)``.
        b: per-seed values of the second method on the same seeds, ``(n,)``.
        confidence: the coverage of the difference's interval, in ``(0, 1)``.

    Returns:
        The difference ``a - b`` with its interval, the p-value and the win rate.

    Raises:
        ValueError: ``a`` and ``b`` are empty or of different lengths, or ``confidence`` is not in ``(0, 1)``.

    Examples:
        >>> result = paired_difference([3, 4, 5, 7, 9], [1, 2, 3, 4, 5])  # differences 2, 2, 2, 3, 4
        >>> str(result.difference), float(result.p_value), result.win_rate
        ('+2.60 [+1.49, +3.71]', 0.0625, 1.0)
    """
    first, second = _as_array(a, "a"), _as_array(b, "b")
    if first.shape != second.shape:
        raise ConfigurationError(
            f"`a` and `b` must hold one value per seed each, got {first.size} and {second.size} values."
        )
    differences = first - second
    interval = mean_interval(differences, confidence)
    wins = float(np.sum(differences > 0) + 0.5 * np.sum(differences == 0))
    return PairedDifference(interval, _wilcoxon(differences), wins / differences.size)


def _wilcoxon(differences: npt.NDArray[np.float64]) -> float:
    """Two-sided Wilcoxon signed-rank p-value; nan with fewer than 2 values, 1.0 where every difference is 0."""
    if differences.size < 2:
        return math.nan
    if not np.any(differences):
        return 1.0  # scipy either raises or divides by zero here, depending on its version
    return _wilcoxon_p(tuple(differences.tolist()))


@functools.lru_cache(maxsize=4096)
def _wilcoxon_p(differences: tuple[float, ...]) -> float:
    """The Wilcoxon p-value of ``scipy.stats.wilcoxon``, computed once per set of differences.

    With zeros or ties scipy enumerates every sign flip (1,024 for 10 seeds), and a study's summary, guidance
    and plot ask for the same pairs after every run.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (RuntimeWarning, UserWarning))  # "sample size too small" and the like
        return float(scipy_stats.wilcoxon(np.asarray(differences)).pvalue)


def _relative_improvement(tuned: npt.NDArray[np.float64], best: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``100 (tuned - best) / |best|``, elementwise; ±inf over a best of 0, nan for 0 over 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (tuned - best) / np.abs(best)


def _improvement_draws(
    tuned: Values | Mapping[str, Values], untuned: Mapping[str, Values], n_resamples: int, rng: np.random.Generator
) -> tuple[float, npt.NDArray[np.float64], int]:
    """The relative improvement on the data, its ``(n_resamples,)`` bootstrap replicates, and the number of seeds."""
    if isinstance(tuned, Mapping):  # several tuned methods: the best of them, chosen again in every resample
        if not tuned:
            raise ConfigurationError("`tuned` must name at least one method.")
        mine = np.stack([_as_array(values, f"tuned[{name!r}]") for name, values in tuned.items()])  # (K, n)
    else:
        mine = _as_array(tuned, "tuned")[None, :]
    if not untuned:
        raise ConfigurationError("`untuned` must name at least one method.")
    others = np.stack([_as_array(values, f"untuned[{name!r}]") for name, values in untuned.items()])  # (M, n)
    n = mine.shape[1]
    if others.shape[1] != n or len({len(row) for row in mine}) > 1:
        sizes = {name: len(np.atleast_1d(values)) for name, values in untuned.items()}
        raise ConfigurationError(f"Every method needs one value per seed: `tuned` has {n}, `untuned` has {sizes}.")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigurationError(f"`n_resamples` must be an integer >= 1, got {n_resamples!r}.")
    point = float(_relative_improvement(mine.mean(axis=1).max(), others.mean(axis=1).max()))
    picks = rng.integers(0, n, size=(n_resamples, n))  # (R, n): seeds, the same for every method
    # the best method of each side is chosen again in every resample: max over methods of (M, R) resampled means
    draws = _relative_improvement(mine[:, picks].mean(axis=2).max(axis=0), others[:, picks].mean(axis=2).max(axis=0))
    return point, draws, int(n)


def _percentile_interval(point: float, draws: npt.NDArray[np.float64], confidence: float, n: int) -> Interval:
    """The percentile interval of ``draws`` around ``point`` (nan bounds for ``n < 2``; nan draws left out)."""
    if n < 2 or np.all(np.isnan(draws)):
        return Interval(point, math.nan, math.nan, n)
    tail = 100.0 * (1 - confidence) / 2
    # no interpolation between draws: a ratio over a best mean near 0 can be ±inf, and inf - inf is nan
    low = np.nanpercentile(draws, tail, method="lower")
    high = np.nanpercentile(draws, 100.0 - tail, method="higher")
    return Interval(point, float(low), float(high), n)


def bootstrap_relative_improvement(
    tuned: Values | Mapping[str, Values],
    untuned: Mapping[str, Values],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    r"""Tuned KD's gain relative to the best untuned method's, with a percentile bootstrap interval over seeds.

    .. math::
        100 \cdot \frac{\bar g_{tuned} - \max_m \bar g_m}{|\max_m \bar g_m|}

    Each resample draws ``n`` seeds with replacement and takes every method's values on those same seeds (the
    methods share a seed's partition and pre-trained student), then re-chooses the best untuned method. The
    interval runs from the ``(1 - confidence) / 2`` to the ``(1 + confidence) / 2`` percentile of the resampled
    figures, each taken as the nearest draw outwards (no interpolation, so an infinite draw stays infinite). A
    resample whose best untuned mean is 0 gives ±inf (nan where tuned KD's is 0 too; those are left out).

    ``scipy.stats.bootstrap`` resamples one data set; the same draws here also serve
    :func:`bootstrap_average_improvement`, which resamples each scenario's seeds on their own, so the
    resampling is numpy's, from ``np.random.default_rng(seed)``.

    Args:
        tuned: tuned KD's per-seed gains, ``(n,)``; or several tuned methods' by name, the best of them chosen
            again in every resample as the best untuned method is.
        untuned: each untuned method's per-seed gains on the same seeds, ``(n,)`` each.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage, in ``(0, 1)``.
        seed: seeds the resampling: the same arguments give the same interval.

    Returns:
        The figure on the data as ``mean`` (inf or nan where the best untuned mean gain is 0) and its interval;
        with one seed, no interval (nan bounds).

    Raises:
        ValueError: no values, no untuned method, lengths that differ, ``n_resamples < 1``, or ``confidence``
            not in ``(0, 1)``.

    Examples:
        >>> tuned, untuned = [1.2, 1.0, 1.4], {"vanilla_kd": [1.0, 0.9, 1.1], "dml": [0.5, 1.2, 0.7]}
        >>> interval = bootstrap_relative_improvement(tuned, untuned)
        >>> round(interval.mean, 1)  # 100 * (1.2 - 1.0) / 1.0
        20.0
        >>> interval.low <= interval.mean <= interval.high, interval == bootstrap_relative_improvement(tuned, untuned)
        (True, True)
    """
    confidence = _check_confidence(confidence)
    point, draws, n = _improvement_draws(tuned, untuned, n_resamples, np.random.default_rng(seed))
    return _percentile_interval(point, draws, confidence, n)


def bootstrap_average_improvement(
    scenarios: Sequence[tuple[Values | Mapping[str, Values], Mapping[str, Values]]],
    average: Literal["mean", "median"] = "mean",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The mean or median over scenarios of :func:`bootstrap_relative_improvement`'s figure, with its interval.

    Scenarios are independent (their own partitions and students), so each one's seeds are resampled on their
    own, from a child of ``np.random.SeedSequence(seed)``; every resample averages the scenarios' resampled
    figures. The average of a single scenario is that scenario's figure, with the very interval
    :func:`bootstrap_relative_improvement` gives it (the same ``seed``). Without an interval (nan bounds) where a
    scenario has a single seed.

    Args:
        scenarios: per scenario, ``(tuned, untuned)`` as :func:`bootstrap_relative_improvement` takes them.
        average: ``"mean"`` or ``"median"`` over scenarios.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage, in ``(0, 1)``.
        seed: seeds the resampling.

    Returns:
        The average of the scenarios' figures on the data and its percentile interval; ``n`` is the number of
        scenarios.

    Raises:
        ValueError: no scenario, ``average`` not ``"mean"`` or ``"median"``, or a scenario
            :func:`bootstrap_relative_improvement` refuses.

    Examples:
        >>> a = ([1.2, 1.0, 1.4], {"vanilla_kd": [1.0, 0.9, 1.1]})  # +20%
        >>> b = ([0.6, 0.4, 0.5], {"vanilla_kd": [0.2, 0.3, 0.1]})  # +150%
        >>> interval = bootstrap_average_improvement([a, b])
        >>> round(interval.mean, 1), interval.n, interval.low <= interval.mean <= interval.high
        (85.0, 2, True)
    """
    confidence = _check_confidence(confidence)
    if not scenarios:
        raise ConfigurationError("`scenarios` must hold at least one scenario.")
    if average not in ("mean", "median"):
        raise ConfigurationError(f"`average` must be 'mean' or 'median', got {average!r}.")
    if len(scenarios) == 1:
        alone = bootstrap_relative_improvement(*scenarios[0], n_resamples, confidence, seed)
        return Interval(alone.mean, alone.low, alone.high, 1)
    reduce = np.mean if average == "mean" else np.median
    children = np.random.SeedSequence(seed).spawn(len(scenarios))
    results = [
        _improvement_draws(tuned, untuned, n_resamples, np.random.default_rng(child))
        for (tuned, untuned), child in zip(scenarios, children, strict=True)
    ]
    point = float(reduce([result[0] for result in results]))
    draws = reduce(np.stack([result[1] for result in results]), axis=0)  # (S, R) -> (R,)
    if min(result[2] for result in results) < 2:
        return Interval(point, math.nan, math.nan, len(scenarios))
    return _percentile_interval(point, draws, confidence, len(scenarios))


def rank(intervals: Mapping[str, Interval]) -> list[Ranked]:
    """Order methods by mean, highest first, and mark which neighbours are told apart.

    Two neighbours are *clearly* apart where their intervals do not overlap and both are evidence (at least
    :data:`MIN_SEEDS` seeds, some spread: :attr:`Interval.why_not_evidence`); otherwise there is no clear
    difference, and they share a :attr:`Ranked.group`. Groups chain along neighbours: with ``A ≈ B`` and
    ``B ≈ C``, all three share a group even where ``A``'s and ``C``'s intervals do not overlap. Overlap is a
    cautious reading: two 95% intervals that do not overlap mean a difference at well below the 5% level, but
    two that overlap slightly can still hide one.

    Args:
        intervals: method name → its interval (e.g. of the gain over the control).

    Returns:
        One :class:`Ranked` per method, by decreasing mean (ties by name; a nan mean last).

    Examples:
        >>> ranking = rank({"dml": Interval(0.5, 0.0, 1.0, 5), "tuned_kd": Interval(2.0, 1.5, 2.5, 5),
        ...                 "dpkd": Interval(0.8, 0.2, 1.4, 5)})
        >>> [(r.name, r.group, r.clearly_ahead_of_next) for r in ranking]
        [('tuned_kd', 1, True), ('dpkd', 2, False), ('dml', 2, None)]
    """

    def order(item: tuple[str, Interval]) -> tuple[bool, float, str]:
        name, interval = item
        return (math.isnan(interval.mean), 0.0 if math.isnan(interval.mean) else -interval.mean, name)

    def apart(upper: Interval, lower: Interval) -> bool:
        return upper.is_evidence and lower.is_evidence and not upper.overlaps(lower)

    ordered = sorted(intervals.items(), key=order)
    ranked: list[Ranked] = []
    group = 1
    for index, (name, interval) in enumerate(ordered):
        if index and apart(ordered[index - 1][1], interval):
            group += 1
        ahead = None if index == len(ordered) - 1 else apart(interval, ordered[index + 1][1])
        ranked.append(Ranked(name, interval, group, ahead))
    return ranked
