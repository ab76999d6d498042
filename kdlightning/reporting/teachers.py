"""Studies beside teachers of different strength: what tuning gains against how far the teacher leads the student.

One study per teacher (e.g. ``teacher_pretrain_epochs`` 60, 8 and 2), the same student and seeds in each. For each
study and scenario, the teacher's test accuracy minus the student's (paired by seed, with its t-interval) and the
best tuned run's relative improvement over the best untuned method (with its bootstrap interval): a table of the
studies and a plot of the improvement against the gap, one point per study and scenario.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlightning.atomic import save_figure
from kdlightning.reporting.rows import _with_gains
from kdlightning.reporting.tuned import BestTuned, average_improvement, best_tuned_improvement, teacher_gaps
from kdlightning.stats import Interval

__all__ = ["TeacherPoint", "plot_teacher_sweep", "render_teacher_sweep", "teacher_sweep"]


@dataclass(frozen=True)
class TeacherPoint:
    """One scenario of one study: the teacher's lead over the student and what tuning gains there."""

    study: str
    """The study's label (its teacher)."""
    scenario: str
    gap: Interval
    """The teacher's test accuracy minus the student's before any method (pp), paired by seed."""
    improvement: Interval
    """100 · (best tuned - best untuned) / |best untuned| in %, with its bootstrap interval."""
    tuned: str
    """The best tuned run."""
    untuned: str
    """The best untuned method."""


def teacher_sweep(
    studies: Mapping[str, Sequence[Mapping[str, Any]]],
    tuned: Sequence[str],
    untuned: Sequence[str],
    control: str,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> list[TeacherPoint]:
    """Every study's scenarios as :class:`TeacherPoint`, in the studies' order.

    ``studies`` maps a label to a study's ``results.csv`` rows (with ``acc_teacher``). A scenario without a
    teacher accuracy, a tuned run or an untuned method is left out.
    """
    points = []
    for label, rows in studies.items():
        best = best_tuned_improvement(rows, tuned, untuned, control, confidence, n_resamples, seed)
        points += _points(label, rows, best, control, confidence)
    return points


def _points(
    label: str,
    rows: Sequence[Mapping[str, Any]],
    best: Mapping[str, BestTuned | None],
    control: str,
    confidence: float,
) -> list[TeacherPoint]:
    """Study ``label``'s scenarios with a teacher accuracy and a :func:`best_tuned_improvement` (``best``)."""
    gaps = teacher_gaps(rows, control, confidence)
    return [
        TeacherPoint(label, scenario, gaps[scenario].difference, result.relative, result.tuned, result.untuned)
        for scenario, result in best.items()
        if result is not None and scenario in gaps
    ]


def render_teacher_sweep(
    studies: Mapping[str, Sequence[Mapping[str, Any]]],
    tuned: Sequence[str],
    untuned: Sequence[str],
    control: str,
    iid_scenarios: Sequence[str] = ("iid",),
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> str:
    """A Markdown table: per study, the teacher's lead and the improvement of tuning, IID and averaged off IID.

    The averages are :func:`~kdlightning.reporting.tuned.average_improvement`'s, as each study's ``summary.md``
    gives them; the non-IID gap is the range of the scenarios' mean gaps.
    """
    level = f"{confidence:.0%}"
    lines = [
        f"| teacher | teacher - student (pp), IID [{level} interval] | over the non-IID scenarios "
        f"| best tuned over best untuned: IID [{level} bootstrap] | non-IID average |",
        "|---|---|---|---|---|",
    ]
    for label, rows in studies.items():
        best = best_tuned_improvement(rows, tuned, untuned, control, confidence, n_resamples, seed)
        points = _points(label, rows, best, control, confidence)
        iid = [point for point in points if point.scenario in iid_scenarios]
        off = [point.gap.mean for point in points if point.scenario not in iid_scenarios]
        with_gains = _with_gains(rows, control)
        figures = [
            average_improvement(with_gains, best, tuned, untuned, side, iid_scenarios, confidence, n_resamples, seed)
            for side in (True, False)
        ]
        cells = [
            ", ".join(str(point.gap) for point in iid) or "-",
            f"{min(off):+.2f} to {max(off):+.2f}" if off else "-",
            *(figure[0].format(1, "%") if figure is not None else "-" for figure in figures),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_teacher_sweep(points: Sequence[TeacherPoint], path: str | Path, title: str = "") -> Path:
    """The improvement of tuning against the teacher's lead (PNG): one point per study and scenario, both intervals.

    An improvement without finite bounds (a best untuned gain near 0) is drawn without its vertical bar.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    markers = "osD^v<>ph"
    for number, study in enumerate(dict.fromkeys(point.study for point in points)):
        mine = [point for point in points if point.study == study]
        axes.errorbar(
            [point.gap.mean for point in mine],
            [point.improvement.mean for point in mine],
            xerr=[[_below(point.gap) for point in mine], [_above(point.gap) for point in mine]],
            yerr=[[_below(point.improvement) for point in mine], [_above(point.improvement) for point in mine]],
            fmt=markers[number % len(markers)],
            capsize=2,
            label=study,
        )
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.axvline(0.0, color="grey", linewidth=0.6, linestyle=":")
    axes.set_xlabel("teacher - student test accuracy (pp), paired by seed")
    axes.set_ylabel("best tuned over best untuned (%)")
    axes.legend(fontsize=8)
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)


def _below(interval: Interval) -> float:
    low = interval.mean - interval.low
    return low if math.isfinite(low) else 0.0


def _above(interval: Interval) -> float:
    high = interval.high - interval.mean
    return high if math.isfinite(high) else 0.0
