"""Rows of a study's ``results.csv`` and the statistics of their gains (no Lightning, no Markdown).

A study makes each row as a :class:`ResultRow` (typed: its hyperparameters a mapping, not text) and writes it
with :meth:`ResultRow.to_csv`. The statistics read rows as mappings with at least ``scenario``, ``seed``,
``method``, ``acc_before`` and ``acc_after`` (accuracies in ``[0, 1]`` on the global test set), as
``results.csv`` holds them (values read back from CSV are strings); :func:`hyperparameters_of` reads a row's
hyperparameters back, in one place. Which methods are tuned, untuned or the control is the study's to say:
every function here takes their names.
The **gain** of a run is ``100 * (acc_after - acc_before)`` percentage points; its **gain over the
control** subtracts the gain of the control method (the student trained alone for the same epochs) of
the same scenario and seed. A **failed** run (a diverging method) has a non-empty ``error`` and no
``acc_after``: it is counted and listed, and left out of every statistic; a comparison by seed uses only
the seeds where both runs finished. A tuned row carries ``validation``: where its search validated, ``own`` or
``public`` (``own`` where missing).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlightning.atomic import write_text_atomic
from kdlightning.stats import (
    Interval,
    PairedDifference,
    bootstrap_relative_improvement,
    mean_interval,
    paired_difference,
)

__all__ = [
    "VALIDATIONS",
    "ResultRow",
    "TunedImprovement",
    "add_gains",
    "error_line",
    "hyperparameters_of",
    "is_failed",
    "paired_gains",
    "read_csv",
    "slug",
    "summarize",
    "tuned_improvement",
    "tuned_validation",
    "write_csv",
]


VALIDATIONS: dict[str, str] = {
    "own": "a split of the student party's own data",
    "public": "a labelled split held out before partitioning, drawn like the test set",
}
"""Where tuned KD's search validates (a tuned row's ``validation``), in words."""


@dataclass(frozen=True)
class ResultRow:
    """One run of a study: what ``results.csv`` holds of it (its gains are computed from the rows, :func:`add_gains`).

    Attributes:
        scenario: the scenario's text (``dirichlet(alpha=0.5)``).
        seed: the seed of the partition, the pre-training and the run.
        method: the run's name in the study (its control, a method, a tuned method).
        method_class: the method's class name (the ``class`` column).
        acc_before: the student's test accuracy before the run ("" where its pre-training diverged).
        acc_after: after it; None for a failed run.
        acc_teacher: the teacher party's pre-trained network's test accuracy in the run's cell ("" where unknown).
        hyperparameters: the method's hyperparameters, or a tuned run's chosen values with its search's figures.
        seconds: the run's wall time (a batched member's share of its fit); None for a failed run.
        epochs: epochs of the run.
        validation: a tuned run's validation split (``own``, ``public``); "" for the others.
        error: why the run failed (``DivergedError: ...``); "" if it did not.
    """

    scenario: str
    seed: int
    method: str
    method_class: str
    acc_before: float | str
    acc_after: float | None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    epochs: int = 0
    validation: str = ""
    error: str = ""
    acc_teacher: float | str = ""

    def to_csv(self) -> dict[str, Any]:
        """The row's ``results.csv`` columns, in their order: a failed row has ``error`` and no ``seconds``.

        Examples:
            >>> ResultRow("iid", 0, "kd", "VanillaKD", 0.8, 0.85, {"alpha": 0.5}, 1.5, 10).to_csv()["hyperparameters"]
            '{"alpha": 0.5}'
        """
        row: dict[str, Any] = {
            "scenario": self.scenario,
            "seed": self.seed,
            "method": self.method,
            "class": self.method_class,
            "acc_before": self.acc_before,
            "acc_after": "" if self.acc_after is None else self.acc_after,
            "acc_teacher": self.acc_teacher,
            "hyperparameters": json.dumps(dict(self.hyperparameters), default=str),
        }
        if self.error:
            row["error"] = self.error
        else:
            row["seconds"] = self.seconds
        if self.validation:
            row["validation"] = self.validation
        row["epochs"] = self.epochs
        return row


def hyperparameters_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's ``hyperparameters``: the mapping of a :class:`ResultRow`'s, read back from ``results.csv``'s JSON text.

    Examples:
        >>> hyperparameters_of({"hyperparameters": '{"temperature": 4.0, "alpha": 0.5}'})
        {'temperature': 4.0, 'alpha': 0.5}
        >>> hyperparameters_of({"hyperparameters": ""})
        {}
    """
    found = row.get("hyperparameters")
    values = json.loads(found) if isinstance(found, str) and found else found
    return dict(values) if isinstance(values, Mapping) else {}


def slug(text: str) -> str:
    """``text`` as a directory name: ``dirichlet(alpha=0.5)`` → ``dirichlet-alpha-0.5``.

    Examples:
        >>> slug("label_skew(classes_per_party=2)")
        'label-skew-classes-per-party-2'
    """
    return "-".join("".join(c if c.isalnum() or c == "." else " " for c in text).split())


def error_line(error: BaseException) -> str:
    r"""The first line of ``error``'s message: what a failed run or trial records under ``error``.

    Examples:
        >>> error_line(FloatingPointError("Non-finite training loss at step 3\nLower the learning rate."))
        'Non-finite training loss at step 3'
        >>> error_line(FloatingPointError())
        ''
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def is_failed(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` records a failed run: it has an ``error`` (a row read back from CSV has ``""`` if not).

    Examples:
        >>> is_failed({"error": "DivergedError: Non-finite training loss"}), is_failed({"error": ""})
        (True, False)
    """
    return bool(row.get("error"))


def add_gains(rows: Iterable[Mapping[str, Any]], control: str) -> list[dict[str, Any]]:
    """Return the rows with ``gain_pp`` and ``gain_over_control_pp``.

    Both are None for a failed run (:func:`is_failed`); the gain over the control is None too where the
    control of the same scenario and seed is missing or failed.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": 0, "method": "student_only", "acc_before": 0.80, "acc_after": 0.82},
        ...     {"scenario": "iid", "seed": 0, "method": "vanilla_kd", "acc_before": 0.80, "acc_after": 0.85},
        ... ]
        >>> gains = add_gains(rows, control="student_only")
        >>> [(r["method"], round(r["gain_pp"], 2), round(r["gain_over_control_pp"], 2)) for r in gains]
        [('student_only', 2.0, 0.0), ('vanilla_kd', 5.0, 3.0)]
    """
    out = [dict(row) for row in rows]
    for row in out:
        failed = is_failed(row) or row.get("acc_after") in (None, "")
        row["gain_pp"] = None if failed else 100.0 * (float(row["acc_after"]) - float(row["acc_before"]))
    controls = {(row["scenario"], str(row["seed"])): row["gain_pp"] for row in out if row["method"] == control}
    for row in out:
        base = controls.get((row["scenario"], str(row["seed"])))
        row["gain_over_control_pp"] = None if base is None or row["gain_pp"] is None else row["gain_pp"] - base
    return out


def _value(row: Mapping[str, Any], key: str) -> float | None:
    """``row[key]`` as a finite float (a CSV cell is a string), or None where it is missing, empty or not finite."""
    value = row.get(key)
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _per_seed(rows: Iterable[Mapping[str, Any]], key: str = "gain_pp") -> dict[tuple[str, str], dict[str, float]]:
    """``(scenario, method)`` → seed → ``row[key]``; rows without a value (failed runs, missing controls) left out."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        value = _value(row, key)
        if value is not None:
            table.setdefault((str(row["scenario"]), str(row["method"])), {})[str(row["seed"])] = value
    return table


def _with_gains(rows: Sequence[Mapping[str, Any]], control: str) -> list[Mapping[str, Any]]:
    """``rows`` with their gains: as they are where they carry ``gain_pp`` (from ``results.csv``), else computed."""
    if rows and "gain_pp" not in rows[0]:
        return list(add_gains(rows, control=control))
    return list(rows)


def _tuned_names(tuned: str | Sequence[str]) -> tuple[str, ...]:
    return (tuned,) if isinstance(tuned, str) else tuple(tuned)


def summarize(
    rows: Iterable[Mapping[str, Any]], key: str = "gain_pp", confidence: float = 0.95
) -> dict[tuple[str, str], Interval]:
    """Mean and t-interval of ``key`` over seeds, per ``(scenario, method)`` (:func:`kdlightning.stats.mean_interval`).

    Rows where ``key`` is None or empty (a failed run, or a missing control) are left out.

    Examples:
        >>> rows = [{"scenario": "iid", "seed": s, "method": "kd", "gain_pp": g} for s, g in ((0, "1.0"), (1, "3.0"))]
        >>> cell = summarize(rows)[("iid", "kd")]
        >>> str(cell), cell.n  # mean 2, sd 1.41, t(0.975, 1) = 12.71
        ('+2.00 [-10.71, +14.71]', 2)
    """
    return {group: mean_interval(list(values.values()), confidence) for group, values in _per_seed(rows, key).items()}


def paired_gains(
    rows: Sequence[Mapping[str, Any]], control: str, confidence: float = 0.95
) -> dict[tuple[str, str], PairedDifference]:
    """Each method's gain over the control, paired by seed, per ``(scenario, method)`` (the control left out).

    Per seed, the method's gain minus the control's gain on that seed (the same partition and pre-trained student);
    then :func:`kdlightning.stats.paired_difference`: the interval of the mean difference, the Wilcoxon p-value
    and the win rate. Only seeds where both runs finished count.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": after}
        ...     for seed, control, kd in ((0, 0.60, 0.62), (1, 0.61, 0.62), (2, 0.60, 0.63), (3, 0.62, 0.64))
        ...     for method, after in (("student_only", control), ("vanilla_kd", kd))
        ... ]
        >>> result = paired_gains(rows, control="student_only")[("iid", "vanilla_kd")]  # differences 2, 1, 3, 2 pp
        >>> str(result.difference), round(result.p_value, 3), result.win_rate
        ('+2.00 [+0.70, +3.30]', 0.125, 1.0)
    """
    gains = _per_seed(_with_gains(rows, control))
    out: dict[tuple[str, str], PairedDifference] = {}
    for (scenario, method), values in gains.items():
        base = gains.get((scenario, control), {})
        seeds = [seed for seed in values if seed in base]
        if method != control and seeds:
            out[(scenario, method)] = paired_difference(
                [values[seed] for seed in seeds], [base[seed] for seed in seeds], confidence
            )
    return out


@dataclass(frozen=True)
class TunedImprovement:
    """A tuned method against the best untuned method in one scenario, on the seeds where all of them finished."""

    best: str
    """The untuned method with the highest mean gain on those seeds."""
    best_gain: Interval
    """Its gain (pp), mean and t-interval over those seeds."""
    tuned_gain: Interval
    """The tuned method's gain (pp), mean and t-interval over those seeds."""
    difference: PairedDifference
    """The tuned method's gain minus the best untuned method's, paired by seed."""
    relative: Interval
    """The study's metric (:func:`kdlightning.stats.bootstrap_relative_improvement`), in %: its ``mean`` is inf
    or nan where the best untuned mean gain is 0."""


def _improvement_data(
    rows: Sequence[Mapping[str, Any]], tuned: str, untuned: Sequence[str]
) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
    """Per scenario, the tuned method's gains and the untuned methods' on the seeds where every one of them finished.

    An untuned method with no finished run in a scenario is left out of it; a scenario without the tuned method,
    any untuned one, or a common seed is left out.
    """
    gains = _per_seed(rows)
    out: dict[str, tuple[list[float], dict[str, list[float]]]] = {}
    for scenario in dict.fromkeys(str(row["scenario"]) for row in rows):
        mine = gains.get((scenario, tuned), {})
        others = {method: gains[(scenario, method)] for method in untuned if (scenario, method) in gains}
        seeds = [seed for seed in mine if all(seed in values for values in others.values())]
        if seeds and others:
            out[scenario] = (
                [mine[seed] for seed in seeds],
                {method: [values[seed] for seed in seeds] for method, values in others.items()},
            )
    return out


def tuned_improvement(
    rows: Sequence[Mapping[str, Any]],
    tuned: str,
    untuned: Sequence[str],
    control: str,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, TunedImprovement | None]:
    r"""The study's metric per scenario: ``tuned``'s mean gain relative to the best untuned method's.

    .. math::
        100 \cdot \frac{g_{tuned} - \max_m g_m}{|\max_m g_m|}

    with its percentile bootstrap interval, seeds resampled jointly across the methods and the best untuned method
    re-chosen in every resample (:func:`kdlightning.stats.bootstrap_relative_improvement`). Only seeds where
    ``tuned`` and every untuned method of the scenario finished count. None where ``tuned`` or every untuned
    method is missing.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": 0.5 + gain / 100}
        ...     for seed, gains in enumerate(((1.0, 1.2, 0.5), (0.9, 1.0, 1.2), (1.1, 1.4, 0.7)))
        ...     for method, gain in zip(("vanilla_kd", "tuned_kd", "dml"), gains)
        ... ]
        >>> result = tuned_improvement(rows, "tuned_kd", ["vanilla_kd", "dml"], control="student_only")["iid"]
        >>> result.best, result.relative.format(1, "%")[:6]  # 100 * (1.2 - 1.0) / 1.0
        ('vanilla_kd', '+20.0%')
    """
    rows = _with_gains(rows, control)
    untuned = [method for method in untuned if method != tuned]
    data = _improvement_data(rows, tuned, untuned)
    out: dict[str, TunedImprovement | None] = {}
    for scenario in dict.fromkeys(str(row["scenario"]) for row in rows):
        if scenario not in data:
            out[scenario] = None
            continue
        mine, others = data[scenario]
        best = max(others, key=lambda method: sum(others[method]))  # the highest mean: same seeds, same count
        out[scenario] = TunedImprovement(
            best=best,
            best_gain=mean_interval(others[best], confidence),
            tuned_gain=mean_interval(mine, confidence),
            difference=paired_difference(mine, others[best], confidence),
            relative=bootstrap_relative_improvement(mine, others, n_resamples, confidence, seed),
        )
    return out


def tuned_validation(rows: Iterable[Mapping[str, Any]], tuned: str) -> str:
    """Where ``tuned``'s search validated, from its rows' ``validation``: ``own`` where it is missing (older results).

    Examples:
        >>> tuned_validation([{"method": "tuned_kd_public", "validation": "public"}], "tuned_kd_public")
        'public'
        >>> tuned_validation([{"method": "tuned_kd", "validation": ""}], "tuned_kd")
        'own'
    """
    found = dict.fromkeys(str(row.get("validation") or "own") for row in rows if str(row["method"]) == tuned)
    return ", ".join(found) or "own"


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as CSV atomically; columns are the union of keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))
