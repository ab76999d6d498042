"""The tuned runs against the untuned methods: which tuned method wins, and what tuning each method is worth.

A study may tune several methods (``tuned_kd``, ``tuned_dpkd``, ``tuned_dml``, each maybe ``_public``). For each
scenario this module compares the best tuned run with the best untuned method (paired by seed, and the paper's
relative improvement with both bests chosen again in every bootstrap resample), and each tuned run with the
untuned run of its own method (the gain of tuning, paired by seed). Numbers come from
:mod:`kdlightning.stats`; the Markdown sections are written here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdlightning.reporting.rows import _per_seed, _with_gains
from kdlightning.stats import (
    Interval,
    PairedDifference,
    bootstrap_average_improvement,
    bootstrap_relative_improvement,
    mean_interval,
    paired_difference,
)

__all__ = [
    "BestTuned",
    "average_improvement",
    "best_tuned_improvement",
    "counterparts",
    "render_best_tuned",
    "render_teacher_gap",
    "teacher_gaps",
    "tuning_gains",
]


@dataclass(frozen=True)
class BestTuned:
    """The best tuned run against the best untuned method in one scenario, on the seeds where all finished."""

    tuned: str
    """The tuned run with the highest mean gain on those seeds."""
    untuned: str
    """The untuned method with the highest mean gain on those seeds."""
    tuned_gain: Interval
    untuned_gain: Interval
    difference: PairedDifference
    """The best tuned run's gain minus the best untuned method's, paired by seed."""
    relative: Interval
    """100 · (best tuned - best untuned) / |best untuned| in %, both bests chosen again in every resample."""


def _common_seeds(rows: Sequence[Mapping[str, Any]], scenario: str, methods: Sequence[str]) -> dict[str, list[float]]:
    """Each of ``methods`` that finished in ``scenario``: its gains on the seeds where every one of them finished."""
    gains = _per_seed(rows)
    present = {method: gains[(scenario, method)] for method in methods if (scenario, method) in gains}
    if not present:
        return {}
    seeds = [seed for seed in next(iter(present.values())) if all(seed in values for values in present.values())]
    return {method: [values[seed] for seed in seeds] for method, values in present.items()} if seeds else {}


def _split(
    rows: Sequence[Mapping[str, Any]], scenario: str, tuned: Sequence[str], untuned: Sequence[str]
) -> tuple[dict[str, list[float]], dict[str, list[float]]] | None:
    """The tuned runs' and the untuned methods' gains on their common seeds in ``scenario``; None if a side lacks."""
    both = _common_seeds(rows, scenario, [*tuned, *untuned])
    mine = {name: values for name, values in both.items() if name in tuned}
    others = {name: values for name, values in both.items() if name in untuned}
    return (mine, others) if mine and others else None


def best_tuned_improvement(
    rows: Sequence[Mapping[str, Any]],
    tuned: Sequence[str],
    untuned: Sequence[str],
    control: str,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, BestTuned | None]:
    """Per scenario, the best tuned run against the best untuned method (None where either side has no run).

    Only seeds where every tuned run and every untuned method of the scenario finished count, so every mean is
    over the same seeds. The relative improvement is :func:`kdlightning.stats.bootstrap_relative_improvement`
    with every tuned run: the best of each side is chosen again in every resample.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": 0.5 + gain / 100}
        ...     for seed, gains in enumerate(((1.0, 1.2, 1.5), (0.9, 1.0, 1.3), (1.1, 1.4, 1.6)))
        ...     for method, gain in zip(("dpkd", "tuned_kd", "tuned_dpkd"), gains)
        ... ]
        >>> result = best_tuned_improvement(rows, ["tuned_kd", "tuned_dpkd"], ["dpkd"], "student_only")["iid"]
        >>> result.tuned, result.untuned, result.relative.format(1, "%")[:6]  # 100 * (1.467 - 1.0) / 1.0
        ('tuned_dpkd', 'dpkd', '+46.7%')
    """
    rows = _with_gains(rows, control)
    out: dict[str, BestTuned | None] = {}
    for scenario in dict.fromkeys(str(row["scenario"]) for row in rows):
        sides = _split(rows, scenario, tuned, untuned)
        if sides is None:
            out[scenario] = None
            continue
        mine, others = sides
        best_mine = max(mine, key=lambda name: sum(mine[name]))  # the highest mean: same seeds, same count
        best_other = max(others, key=lambda name: sum(others[name]))
        out[scenario] = BestTuned(
            tuned=best_mine,
            untuned=best_other,
            tuned_gain=mean_interval(mine[best_mine], confidence),
            untuned_gain=mean_interval(others[best_other], confidence),
            difference=paired_difference(mine[best_mine], others[best_other], confidence),
            relative=bootstrap_relative_improvement(mine, others, n_resamples, confidence, seed),
        )
    return out


def counterparts(
    rows: Sequence[Mapping[str, Any]], methods: Mapping[str, str | None], untuned: Sequence[str]
) -> dict[str, str]:
    """Each tuned run's untuned counterpart: the run of the method it tuned.

    Args:
        rows: the study's rows (their ``class`` column names each run's class).
        methods: each tuned run's method (a key of the study's ``methods``), or None for tuned KD, whose counterpart
            is the one untuned method of its class (``VanillaKD``), if exactly one.
        untuned: the untuned methods.

    Returns:
        Tuned run → untuned method, for the tuned runs that have one.
    """
    classes: dict[str, set[str]] = {}
    for row in rows:
        classes.setdefault(str(row["method"]), set()).add(str(row.get("class", "")))
    out = {}
    for name, method in methods.items():
        if method is not None:
            if method in untuned:
                out[name] = method
            continue
        same = [other for other in untuned if classes.get(other) == classes.get(name)]
        if len(same) == 1:
            out[name] = same[0]
    return out


def tuning_gains(
    rows: Sequence[Mapping[str, Any]], pairs: Mapping[str, str], control: str, confidence: float = 0.95
) -> dict[tuple[str, str], PairedDifference]:
    """What tuning is worth: per ``(scenario, tuned run)``, its gain minus its counterpart's, paired by seed.

    Args:
        rows: the study's rows.
        pairs: tuned run → its untuned counterpart (:func:`counterparts`).
        control: the control's name (the gains are over the student before; the control cancels in a difference).
        confidence: the intervals' coverage.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": 0.5 + gain / 100}
        ...     for seed, gains in enumerate(((1.0, 1.5), (0.9, 1.3), (1.1, 1.8)))
        ...     for method, gain in zip(("dpkd", "tuned_dpkd"), gains)
        ... ]
        >>> gains = tuning_gains(rows, {"tuned_dpkd": "dpkd"}, "student_only")  # differences 0.5, 0.4, 0.7 pp
        >>> str(gains[("iid", "tuned_dpkd")].difference)
        '+0.53 [+0.15, +0.91]'
    """
    rows = _with_gains(rows, control)
    out: dict[tuple[str, str], PairedDifference] = {}
    for scenario in dict.fromkeys(str(row["scenario"]) for row in rows):
        for name, other in pairs.items():
            both = _common_seeds(rows, scenario, [name, other])
            if len(both) == 2:
                out[(scenario, name)] = paired_difference(both[name], both[other], confidence)
    return out


def average_improvement(
    rows: Sequence[Mapping[str, Any]],
    best: Mapping[str, BestTuned | None],
    tuned: Sequence[str],
    untuned: Sequence[str],
    iid: bool,
    iid_scenarios: Sequence[str] = ("iid",),
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[Interval, int] | None:
    """The mean relative improvement over the IID (``iid``) or the non-IID scenarios, and how many scenarios.

    Over the scenarios of ``best`` (:func:`best_tuned_improvement` of ``rows`` with gains) whose best untuned gain is
    not 0, with :func:`kdlightning.stats.bootstrap_average_improvement` (each scenario's seeds resampled on their
    own, both bests chosen again in each resample). None where no such scenario is.
    """
    scenarios = [
        scenario
        for scenario, result in best.items()
        if result is not None and math.isfinite(result.relative.mean) and (scenario in iid_scenarios) == iid
    ]
    sides = [side for side in (_split(rows, scenario, tuned, untuned) for scenario in scenarios) if side is not None]
    if not sides:
        return None
    return bootstrap_average_improvement(sides, "mean", n_resamples, confidence, seed), len(sides)


def render_best_tuned(
    rows: Sequence[Mapping[str, Any]],
    best: Mapping[str, BestTuned | None],
    tuned: Sequence[str],
    untuned: Sequence[str],
    pairs: Mapping[str, str],
    control: str,
    iid_scenarios: Sequence[str] = ("iid",),
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> list[str]:
    """Markdown lines: the best tuned run against the best untuned method, then the gain of tuning each method.

    ``best`` is :func:`best_tuned_improvement` of the same rows and methods.
    """
    level = f"{confidence:.0%}"
    lines: list[str] = []
    rows = _with_gains(rows, control)
    if len(tuned) > 1 and any(result is not None for result in best.values()):
        lines += [
            "## The best tuned method against the best untuned one",
            "",
            f"Per scenario, on the seeds where every tuned run ({', '.join(tuned)}) and every untuned method "
            f"finished: the tuned run and the untuned method with the highest mean gain (pp) [{level} interval], "
            f"their difference paired by seed, and the improvement 100 · (best tuned - best untuned) / |best "
            f"untuned| with its {level} bootstrap interval ({n_resamples} resamples of the seeds, both bests chosen "
            "again in each).",
            "",
            "| scenario | seeds | best tuned | its gain (pp) | best untuned | its gain (pp) | difference (pp) "
            "| improvement |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for scenario, result in best.items():
            if result is None:
                lines.append(f"| {scenario} | - | - | - | - | - | - | - |")
                continue
            relative = result.relative
            cells = [
                str(result.difference.n),
                result.tuned,
                str(result.tuned_gain),
                result.untuned,
                str(result.untuned_gain),
                str(result.difference.difference),
                relative.format(1, "%") if math.isfinite(relative.mean) else "- (the best untuned gain is 0)",
            ]
            lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
        lines.append("")
        for label, iid in (("IID", True), ("Non-IID average", False)):
            average = average_improvement(rows, best, tuned, untuned, iid, iid_scenarios, confidence, n_resamples, seed)
            if average is not None:
                figure, count = average
                paper = "+16%" if iid else "+139%"
                lines.append(
                    f"{label}: {figure.format(1, '%')} over {count} scenario(s) (the study reports {paper} for "
                    "tuned KD alone)."
                )
    gains = tuning_gains(rows, pairs, control, confidence)
    if gains:
        lines += [
            *([""] if lines else []),
            "## The gain of tuning each method",
            "",
            f"Per seed, the tuned run's gain minus the gain of its method untuned (the same partition and pre-trained "
            f"student): the mean difference (pp) with its {level} interval, the Wilcoxon p-value and the share of "
            "seeds where tuning gained more (a tie counts half).",
            "",
            "| scenario | tuned run | untuned method | seeds | tuned - untuned (pp) | Wilcoxon p | win rate |",
            "|---|---|---|---|---|---|---|",
        ]
        for (scenario, name), gain in gains.items():
            p_value = "-" if math.isnan(gain.p_value) else f"{gain.p_value:#.3g}"
            lines.append(
                f"| {scenario} | {name} | {pairs[name]} | {gain.n} | {gain.difference} | {p_value} "
                f"| {gain.win_rate:.0%} |"
            )
    return lines


def teacher_gaps(
    rows: Sequence[Mapping[str, Any]], control: str, confidence: float = 0.95
) -> dict[str, PairedDifference]:
    """Per scenario, the teacher's test accuracy minus the student's before any method (pp), paired by seed.

    Read from the control's rows (``acc_teacher`` and ``acc_before``); a scenario whose rows carry no teacher
    accuracy (a study written before it was recorded) is left out.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": "student_only", "acc_before": 0.80, "acc_teacher": teacher}
        ...     for seed, teacher in ((0, 0.85), (1, 0.86), (2, 0.84))
        ... ]
        >>> str(teacher_gaps(rows, "student_only")["iid"].difference)
        '+5.00 [+2.52, +7.48]'
    """
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        teacher, student = row.get("acc_teacher"), row.get("acc_before")
        if str(row["method"]) != control or teacher in (None, "") or student in (None, ""):
            continue
        mine = pairs.setdefault(str(row["scenario"]), ([], []))
        mine[0].append(100.0 * float(teacher))
        mine[1].append(100.0 * float(student))
    return {scenario: paired_difference(t, s, confidence) for scenario, (t, s) in pairs.items()}


def render_teacher_gap(
    rows: Sequence[Mapping[str, Any]], best: Mapping[str, BestTuned | None], control: str, confidence: float = 0.95
) -> list[str]:
    """Markdown lines: per scenario, how much better the teacher is than the student, beside what tuning gains.

    ``best`` is :func:`best_tuned_improvement` of the same rows.
    """
    gaps = teacher_gaps(rows, control, confidence)
    if not gaps:
        return []
    level = f"{confidence:.0%}"
    lines = [
        "## The teacher against the student",
        "",
        f"Per seed, the teacher party's pre-trained network's test accuracy minus the student's before any method "
        f"(pp): the mean with its {level} interval, and the share of seeds where the teacher is the more accurate. "
        "Beside it, the best tuned run's gain minus the best untuned method's (pp, paired by seed) and the "
        "relative improvement, from the table above: where the teacher is weaker than the student, the best "
        "untuned gain is small and a relative figure large.",
        "",
        "| scenario | seeds | teacher - student (pp) | teacher ahead | best tuned - best untuned (pp) | improvement |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, gap in gaps.items():
        result = best.get(scenario)
        tuning = ["-", "-"]
        if result is not None:
            relative = result.relative
            shown = relative.format(1, "%") if math.isfinite(relative.mean) else "-"
            tuning = [f"{result.difference.difference} ({result.tuned} - {result.untuned})", shown]
        cells = [str(gap.n), str(gap.difference), f"{gap.win_rate:.0%}", *tuning]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return lines
