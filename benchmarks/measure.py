"""How every benchmark measures (SPEC §8): interleaved repeats of timed units, figures with their noise, verdicts.

A *unit* is one timed piece of work long enough to dwarf the timer and the scheduler (about a second or more: an
epoch of many batches, several fits, several calls). :func:`interleave` runs each unit of a comparison once per
round, the units' order rotating from round to round, for at least :data:`MIN_REPEATS` rounds, so that a slow
patch of a shared machine falls on every side alike. A :class:`Figure` is one number per round (a ratio of two
units of the same round, or a unit's own seconds): its median, a 95% bootstrap interval of that median (the
rounds resampled), the min–max spread, and a verdict against its target: ``met`` when the interval lies on the
target's side, ``not met`` when it lies beyond it, ``within noise`` when it holds the target. Every round's value
goes to the JSON, so any figure can be recomputed.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FULL_REPEATS", "MIN_REPEATS", "Figure", "as_json", "interleave", "paired", "report", "timed", "verdicts"]

MIN_REPEATS = 5
"""Rounds of every comparison, at the least (``--quick``)."""

FULL_REPEATS = 9
"""Rounds of a full run: the same units as ``--quick``, more rounds, so that both give the same verdicts."""

_RESAMPLES = 2000
_LEVEL = 0.95


def timed(work: Callable[[], Any]) -> float:
    """Seconds ``work()`` takes."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def interleave(units: Mapping[str, Callable[[], float]], repeats: int, slices: int = 1) -> dict[str, list[float]]:
    """Each unit's seconds over ``repeats`` rounds, every unit run once per round, in rotating order.

    With ``slices`` > 1 a unit is done in that many slices (each call does one slice's work and returns its
    seconds) and a round runs a slice of every unit in turn, ``slices`` times over, the order rotating from slice
    to slice: a unit's seconds in a round are its slices' sum, spread over the whole round, so that a slow patch of
    the machine falls on every unit of the round alike.

    Args:
        units: by name, a callable that does the unit's (or a slice's) work and returns the seconds it timed (its
            own timing: the steady batches of a fit, say, not its set-up).
        repeats: rounds (at least :data:`MIN_REPEATS`).
        slices: calls that make up one unit.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"`repeats` must be >= {MIN_REPEATS}, got {repeats}.")
    if slices < 1:
        raise ValueError(f"`slices` must be >= 1, got {slices}.")
    names = list(units)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for slice_ in range(slices):
            shift = (round_ * slices + slice_) % len(names)
            for name in names[shift:] + names[:shift]:
                total[name] += float(units[name]())
        for name in names:
            seconds[name].append(total[name])
    return seconds


@dataclass(frozen=True)
class Figure:
    """One figure of a benchmark: a value per round, and its verdict against a target.

    Attributes:
        name: what it is (``cached KD epoch ÷ StudentOnly epoch``).
        values: one value per round (a ratio of two units of that round, or seconds).
        target: the SPEC §8 target, or None for a figure reported without one.
        at_most: the target is an upper bound (``≤``); False: a lower bound (``≥``).
        unit: how a value is written (``""`` for a ratio, ``"s"``).
    """

    name: str
    values: tuple[float, ...]
    target: float | None = None
    at_most: bool = True
    unit: str = ""
    interval: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", _bootstrap_median(self.values))

    @property
    def median(self) -> float:
        """The median over the rounds."""
        return float(statistics.median(self.values))

    @property
    def spread(self) -> tuple[float, float]:
        """The smallest and the largest value over the rounds."""
        return min(self.values), max(self.values)

    @property
    def verdict(self) -> str:
        """``met``, ``not met`` or ``within noise`` (the interval holds the target); ``""`` without a target."""
        if self.target is None:
            return ""
        low, high = self.interval
        if self.at_most:
            return "met" if high <= self.target else "not met" if low > self.target else "within noise"
        return "met" if low >= self.target else "not met" if high < self.target else "within noise"

    def __str__(self) -> str:
        low, high = self.interval
        text = f"{self._number(self.median)} [{self._number(low)}, {self._number(high)}]"
        low_value, high_value = (self._number(value) for value in self.spread)
        text += f" over {len(self.values)} rounds (min to max {low_value} to {high_value})"
        if self.target is not None:
            text += f": {self.verdict} ({'≤' if self.at_most else '≥'} {self._number(self.target)})"
        return text

    def _number(self, value: float) -> str:
        return f"{value:.3g}{self.unit}" if abs(value) < 100 else f"{value:.0f}{self.unit}"

    def as_dict(self) -> dict[str, Any]:
        """The figure in the JSON: every round's value, the median, interval, spread, target and verdict."""
        return {
            "median": self.median,
            "interval": list(self.interval),
            "spread": list(self.spread),
            "values": list(self.values),
            "target": self.target,
            "bound": "at most" if self.at_most else "at least",
            "verdict": self.verdict,
        }


def paired(
    name: str,
    numerator: Sequence[float],
    denominator: Sequence[float] | float,
    target: float | None = None,
    at_most: bool = True,
    scale: float = 1.0,
) -> Figure:
    """The figure ``scale × numerator ÷ denominator``, round by round (a unit against another of the same round).

    Args:
        name: the figure's name.
        numerator: seconds of one unit per round.
        denominator: seconds of the other unit per round (or one number for every round).
        target: its SPEC §8 target.
        at_most: the target is an upper bound.
        scale: multiplies every ratio (``1 / 25``: one unit against 25 of the other).
    """
    bottom = [denominator] * len(numerator) if isinstance(denominator, (int, float)) else list(denominator)
    if len(bottom) != len(numerator):
        raise ValueError(f"{name}: {len(numerator)} numerators against {len(bottom)} denominators.")
    values = tuple(scale * float(top) / float(below) for top, below in zip(numerator, bottom, strict=True))
    return Figure(name, values, target, at_most)


def _bootstrap_median(values: Sequence[float]) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of the median of ``values`` (seeded: the same values, the same interval)."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        value = float(data[0]) if data.size else math.nan
        return value, value
    rng = np.random.default_rng(0)
    medians = np.median(data[rng.integers(0, data.size, (_RESAMPLES, data.size))], axis=1)
    tail = (1 - _LEVEL) / 2
    return float(np.quantile(medians, tail)), float(np.quantile(medians, 1 - tail))


def as_json(value: Any) -> Any:
    """``json.dumps``'s ``default``: a :class:`Figure` as its dict (every round's value), anything else as text."""
    return value.as_dict() if isinstance(value, Figure) else str(value)


def verdicts(rows: Sequence[Mapping[str, Any]], label: Callable[[Mapping[str, Any]], str]) -> dict[str, str]:
    """The verdict of every figure with a target in ``rows`` (each with its ``figures``), named ``label(row): name``."""
    return {
        f"{label(row)}: {name}": figure.verdict
        for row in rows
        for name, figure in row["figures"].items()
        if figure.target is not None
    }


def report(figures: Mapping[str, Any], table: Callable[[Any], str], path: Path | None) -> None:
    """Print a part's ``table`` of ``figures``; write them, every round's value included, to ``path`` if given."""
    print(table(figures))
    if path:
        path.write_text(json.dumps(figures, indent=2, default=as_json))
