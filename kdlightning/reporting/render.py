"""``summary.md``, the guidance page and ``gains.png`` of a study's rows, every number with its uncertainty.

The statistics are :mod:`kdlightning.reporting.rows`' (and :mod:`kdlightning.stats`'); this module only writes them
as Markdown tables and bar charts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlightning.atomic import save_figure
from kdlightning.reporting.rows import (
    VALIDATIONS,
    _improvement_data,
    _tuned_names,
    _with_gains,
    hyperparameters_of,
    is_failed,
    paired_gains,
    summarize,
    tuned_improvement,
    tuned_validation,
)
from kdlightning.reporting.tuned import best_tuned_improvement, render_best_tuned, render_teacher_gap
from kdlightning.stats import MIN_SEEDS, Interval, Ranked, bootstrap_average_improvement, rank

__all__ = [
    "Recommendation",
    "plot_gains",
    "recommendations",
    "render_guidance",
    "render_guidance_page",
    "render_guidance_text",
    "render_summary",
]


def _describe_validation(validation: str) -> str:
    """``validation`` with its meaning: ``own (a split of the student party's own data)``."""
    return "; ".join(
        f"{part} ({VALIDATIONS[part]})" if part in VALIDATIONS else part for part in validation.split(", ")
    )


def _p_text(p_value: float) -> str:
    return "-" if math.isnan(p_value) else f"{p_value:#.3g}"


def render_summary(
    rows: Sequence[Mapping[str, Any]],
    *,
    tuned: str | Sequence[str],
    untuned: Sequence[str],
    control: str,
    settings: Sequence[str] = (),
    pairs: Mapping[str, str] | None = None,
    iid_scenarios: Sequence[str] = ("iid",),
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> str:
    """``summary.md``: every gain over seeds with its interval, the gains over the control paired by seed, rankings.

    - the accuracy gain per method × scenario: mean and t-interval over seeds, with the number of seeds;
    - the gain over the control paired by seed (:func:`paired_gains`): interval, Wilcoxon p-value, win rate;
    - per scenario, the methods ranked by gain over the control, neighbours whose intervals overlap marked
      "no clear difference" (:func:`kdlightning.stats.rank`);
    - for each tuned method of ``tuned`` present in ``rows``, where its search validated and its relative
      improvement over the best untuned method with a bootstrap interval (:func:`tuned_improvement`), then the
      IID figure and the non-IID average and median beside the paper's;
    - with several tuned runs, the best of them against the best untuned method per scenario, and with ``pairs``
      (tuned run → the untuned run of its method) the gain of tuning each method, paired by seed
      (:func:`kdlightning.reporting.tuned.render_best_tuned`);
    - where the rows carry the teacher's accuracy, the teacher's lead over the student per scenario beside what
      tuning gains (:func:`kdlightning.reporting.tuned.render_teacher_gap`);
    - the guidance table (:func:`render_guidance`), with each tuned method's chosen ``settings`` (the names of
      its searched hyperparameters: ``temperature``, ``alpha``).

    A cell with failed runs says how many (its statistics leave them out); the failed runs and their errors are
    listed at the end. The bootstrap is seeded by ``seed``, so the same rows give the same text.
    """
    rows = _with_gains(rows, control)
    tuned = tuple(name for name in _tuned_names(tuned) if any(str(row["method"]) == name for row in rows))
    untuned = [method for method in untuned if method not in tuned]
    scenarios = list(dict.fromkeys(str(r["scenario"]) for r in rows))
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    failures = Counter((str(r["scenario"]), str(r["method"])) for r in rows if is_failed(r))
    level = f"{confidence:.0%}"

    gains = summarize(rows, "gain_pp", confidence)
    lines = [
        f"## Accuracy gain (pp), mean [{level} interval] over seeds",
        "",
        f"Each cell: the mean gain over seeds, its {level} Student-t interval and the number of seeds (n).",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for method in methods:
        cells = [_with_failures(gains.get((s, method)), failures[(s, method)]) for s in scenarios]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")

    paired = paired_gains(rows, control, confidence)
    lines += [
        "",
        f"## Accuracy gain over the control (pp), paired by seed, mean [{level} interval]",
        "",
        f"Per seed, the method's gain minus the gain of {control} (the student trained alone for as long) on the same "
        f"seed: the same partition and pre-trained student. The mean of those differences and its {level} interval; "
        "the two-sided Wilcoxon signed-rank p-value; the win rate, the share of seeds where the method gained more "
        "than the control (a tie counts half). Only seeds where both runs finished count.",
        "",
        "| scenario | method | seeds | gain over the control (pp) | Wilcoxon p | win rate |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        for method in methods:
            result = paired.get((scenario, method))
            failed = failures[(scenario, method)]
            if method == control or (result is None and not failed):
                continue
            seeds = ("-" if result is None else str(result.n)) + (f" ({failed} failed)" if failed else "")
            cells = (
                ["-", "-", "-"]
                if result is None
                else [str(result.difference), _p_text(result.p_value), f"{result.win_rate:.0%}"]
            )
            lines.append(f"| {scenario} | {method} | {seeds} | " + " | ".join(cells) + " |")

    if paired:
        lines += ["", "## Ranking by gain over the control", ""]
        for scenario in scenarios:
            ranking = rank({m: p.difference for (s, m), p in paired.items() if s == scenario})
            if ranking:
                lines.append(f"- {scenario}: {_ranking_text(ranking)}")
        lines += [
            "",
            f"`>`: the method before is clearly ahead, their intervals do not overlap and both rest on at least "
            f"{MIN_SEEDS} seeds with some spread; `≈`: they overlap, or one of them is no evidence.",
        ]
    for name in tuned:
        lines += ["", *_render_improvement(rows, name, untuned, iid_scenarios, control, confidence, n_resamples, seed)]
    present = {name: other for name, other in (pairs or {}).items() if name in tuned}
    best = best_tuned_improvement(rows, tuned, untuned, control, confidence, n_resamples, seed)  # bootstrapped once
    sections = [
        render_best_tuned(rows, best, tuned, untuned, present, control, iid_scenarios, confidence, n_resamples, seed),
        render_teacher_gap(rows, best, control, confidence),
    ]
    for section in sections:
        lines += ["", *section] if section else []
    lines += ["", *render_guidance(rows, tuned=tuned, control=control, settings=settings, confidence=confidence)]
    lines += _render_failures(rows)
    return "\n".join(lines) + "\n"


def _ranking_text(ranking: Sequence[Ranked]) -> str:
    """``a +1.00 [..] ≈ b +0.80 [..] > c -0.20 [..]``, with what ``≈`` means where it appears."""
    text = ""
    for place in ranking:
        text += f"{place.name} {place.interval}"
        if place.interval.has_bounds and not place.interval.is_evidence:
            text += f" ({place.interval.why_not_evidence})"
        if place.clearly_ahead_of_next is not None:
            text += " > " if place.clearly_ahead_of_next else " ≈ "
    if any(place.clearly_ahead_of_next is False for place in ranking):
        text += " (≈: no clear difference, the intervals overlap)"
    return text


def _render_improvement(
    rows: Sequence[Mapping[str, Any]],
    tuned: str,
    untuned: Sequence[str],
    iid_scenarios: Sequence[str],
    control: str,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> list[str]:
    """Markdown lines: ``tuned``'s validation, its relative improvement per scenario, the IID and non-IID figures."""
    level = f"{confidence:.0%}"
    improvements = tuned_improvement(rows, tuned, untuned, control, confidence, n_resamples, seed)
    lines = [
        f"## Relative improvement of {tuned} over the best untuned method",
        "",
        f"{tuned}'s search validated on {_describe_validation(tuned_validation(rows, tuned))}.",
        "",
        f"Gains (pp) on the seeds where {tuned} and every untuned method finished, mean [{level} interval]; their "
        f"difference paired by seed; the improvement 100 · ({tuned} - best) / |best| with its {level} bootstrap "
        f"interval ({n_resamples} resamples of the seeds, the best untuned method chosen again in each).",
        "",
        f"| scenario | seeds | best untuned method | its gain (pp) | {tuned} gain (pp) | difference (pp) "
        "| improvement |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, result in improvements.items():
        if result is None:
            lines.append(f"| {scenario} | - | - | - | - | - | - |")
            continue
        relative = result.relative
        cells = [
            str(result.difference.n),
            result.best,
            str(result.best_gain),
            str(result.tuned_gain),
            str(result.difference.difference),
            relative.format(1, "%") if math.isfinite(relative.mean) else "- (the best untuned gain is 0)",
        ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    data = _improvement_data(rows, tuned, untuned)
    finite = [s for s, result in improvements.items() if result is not None and math.isfinite(result.relative.mean)]
    iid = [scenario for scenario in finite if scenario in iid_scenarios]
    non_iid = [scenario for scenario in finite if scenario not in iid_scenarios]
    lines.append("")
    if iid:  # over one scenario, the average is that scenario's figure, with its interval
        figure = bootstrap_average_improvement([data[s] for s in iid], "mean", n_resamples, confidence, seed)
        lines.append(f"IID: {figure.format(1, '%')} (the study reports +16%).")
    if non_iid:
        scenarios_data = [data[scenario] for scenario in non_iid]
        mean = bootstrap_average_improvement(scenarios_data, "mean", n_resamples, confidence, seed)
        median = bootstrap_average_improvement(scenarios_data, "median", n_resamples, confidence, seed)
        lines.append(
            f"Non-IID average: {mean.format(1, '%')}, median {median.format(1, '%')} over {len(non_iid)} "
            f"scenario{'s' if len(non_iid) != 1 else ''} "
            "(the study reports +139% on average; a relative figure is large where the best untuned gain is near 0: "
            "read it with the difference in points)."
        )
    return lines


def _with_failures(cell: Interval | None, failed: int) -> str:
    """A gain cell: mean [interval] and number of seeds of the runs that finished, and how many failed."""
    if cell is None:
        return f"{failed} failed" if failed else "-"
    counts = f"n={cell.n}" + (f", {failed} failed" if failed else "")
    return f"{cell} ({counts})"


def _render_failures(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines listing the failed runs with their errors (none if every run finished)."""
    failed = [row for row in rows if is_failed(row)]
    if not failed:
        return []
    lines = [
        "",
        "## Failed runs",
        "",
        f"{len(failed)} of {len(rows)} runs failed; the statistics above leave them out.",
        "",
        "| scenario | seed | method | error |",
        "|---|---|---|---|",
    ]
    for row in failed:
        error = str(row["error"]).replace("|", "\\|")
        lines.append(f"| {row['scenario']} | {row['seed']} | {row['method']} | {error} |")
    return lines


def _seeds(rows: Iterable[Mapping[str, Any]]) -> list[int]:
    return sorted({int(row["seed"]) for row in rows})


def _chosen_settings(rows: Sequence[Mapping[str, Any]], scenario: str, tuned: str, settings: Sequence[str]) -> str:
    """The values of ``settings`` that ``tuned``'s search chose on most seeds of ``scenario``, and on how many."""
    points = []
    for row in rows:
        if str(row["scenario"]) != scenario or str(row["method"]) != tuned or is_failed(row):
            continue
        values = hyperparameters_of(row)
        if settings and all(name in values for name in settings):
            points.append(tuple(float(values[name]) for name in settings))
    if not points:
        return "-"
    point, count = Counter(points).most_common(1)[0]
    chosen = ", ".join(f"{name} {value:g}" for name, value in zip(settings, point, strict=True))
    return f"{chosen} ({count} of {len(points)} seeds)"


NO_WINNER = "none: no method beats the control here"
"""The guidance's recommendation where the best method's gain over the control is not shown above 0."""


def _beats_control(interval: Interval) -> bool:
    """Whether a gain over the control is shown above 0: an interval that is evidence, wholly above 0."""
    return interval.is_evidence and interval.low > 0


def _against_zero(interval: Interval) -> str:
    if not interval.is_evidence:
        return interval.why_not_evidence
    if interval.low > 0:
        return "interval above 0"
    if interval.high < 0:
        return "interval below 0 (the control does better)"
    return "interval includes 0"


@dataclass(frozen=True)
class Recommendation:
    """A scenario's row of the guidance: the method with the highest mean gain over the control, and how sure.

    Attributes:
        scenario: the scenario.
        method: the recommended method, with a tuned run's chosen settings; None where no method beats the control.
        best: the method with the highest mean gain over the control (recommended or not); None without one.
        gain: that method's gain over the control, paired by seed, with its interval.
        sure: how sure: whether the interval excludes 0, the runner-up, the win rate.
        settings: each tuned run's chosen settings (``-`` where it has none), in the order of ``tuned``.
    """

    scenario: str
    method: str | None
    best: str | None
    gain: Interval | None
    sure: str
    settings: tuple[str, ...]


def recommendations(
    rows: Sequence[Mapping[str, Any]],
    *,
    tuned: str | Sequence[str],
    control: str,
    settings: Sequence[str] = (),
    confidence: float = 0.95,
) -> list[Recommendation]:
    """Per scenario of ``rows`` (a study's ``results.csv``), the guidance's recommendation.

    The rows of :func:`render_guidance_page`'s table and of :func:`render_guidance_text`'s (``kdl study``'s ending).

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": after}
        ...     for seed in (0, 1, 2)
        ...     for method, after in (("student_only", 0.60), ("dpkd", 0.62 + seed / 100))
        ... ]
        >>> [(r.scenario, r.method, str(r.gain)) for r in recommendations(rows, tuned=[], control="student_only")]
        [('iid', 'dpkd', '+3.00 [+0.52, +5.48]')]
    """
    rows = _with_gains(rows, control)
    tuned = [name for name in _tuned_names(tuned) if any(str(row["method"]) == name for row in rows)]
    paired = paired_gains(rows, control, confidence)
    found = []
    for scenario in dict.fromkeys(str(row["scenario"]) for row in rows):
        chosen = tuple(_chosen_settings(rows, scenario, name, settings) for name in tuned)
        ranking = rank({m: result.difference for (s, m), result in paired.items() if s == scenario})
        if not ranking:
            found.append(Recommendation(scenario, None, None, None, "-", chosen))
            continue
        top, result = ranking[0], paired[(scenario, ranking[0].name)]
        sure = [_against_zero(top.interval)]
        if len(ranking) > 1:
            runner = ranking[1]
            relation = "clearly ahead of" if top.clearly_ahead_of_next else "no clear difference from"
            sure.append(f"{relation} {runner.name} ({runner.interval.mean:+.2f})")
        sure.append(f"wins {result.win_rate:.0%} of {result.n} seeds")
        method = None
        if _beats_control(top.interval):
            method = top.name + (
                f" ({_chosen_settings(rows, scenario, top.name, settings)})" if top.name in tuned else ""
            )
        found.append(Recommendation(scenario, method, top.name, top.interval, "; ".join(sure), chosen))
    return found


def _guidance_table(
    rows: Sequence[Mapping[str, Any]], tuned: Sequence[str], control: str, settings: Sequence[str], confidence: float
) -> list[str]:
    """The guidance table's Markdown lines, with a legend: one row per scenario (rows carry their gains)."""
    tuned = [name for name in tuned if any(str(row["method"]) == name for row in rows)]
    columns = [f"{name} ({tuned_validation(rows, name)} validation): chosen settings" for name in tuned]
    lines = [
        f"The recommended method has the highest mean gain over the control ({control}), paired by seed, with its "
        f"{confidence:.0%} interval; it is recommended only where that interval lies above 0 and is evidence: "
        f"from at least {MIN_SEEDS} seeds, with some spread across them. Otherwise the row says no method beats "
        "the control here and names the best one. How sure: whether the interval excludes 0 (or why it is no "
        "evidence); whether the method is clearly ahead of the runner-up (their intervals do not overlap, both "
        "evidence); the share of seeds where it gained more than the control. A tuned run's settings (beside a "
        f"recommended tuned run too): the ({', '.join(settings)}) its search chose on most seeds.",
        "",
        "| " + " | ".join(["scenario", "recommended", "gain over the control (pp)", "how sure", *columns]) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for found in recommendations(rows, tuned=tuned, control=control, settings=settings, confidence=confidence):
        if found.best is None:
            cells = ["-", "-", "-"]
        elif found.method is not None:
            cells = [found.method, str(found.gain), found.sure]
        else:
            cells = [NO_WINNER, f"best: {found.best} {found.gain}", found.sure]
        lines.append(f"| {found.scenario} | " + " | ".join([*cells, *found.settings]) + " |")
    return lines


def render_guidance_text(
    rows: Sequence[Mapping[str, Any]],
    *,
    tuned: str | Sequence[str],
    control: str,
    settings: Sequence[str] = (),
    confidence: float = 0.95,
) -> str:
    """The guidance as a short plain-text table for a terminal: per scenario, the recommended method and its gain.

    One line per scenario: the recommended method (or ``none`` and the best one in brackets) and its gain over the
    control in percentage points, paired by seed, with its interval (:func:`recommendations`).

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": 0, "method": "student_only", "acc_before": 0.5, "acc_after": 0.6},
        ...     {"scenario": "iid", "seed": 0, "method": "dpkd", "acc_before": 0.5, "acc_after": 0.65},
        ... ]
        >>> print(render_guidance_text(rows, tuned=[], control="student_only"))
        scenario  recommended        gain over student_only (pp)
        iid       none (best: dpkd)  +5.00 [no interval]
    """
    found = recommendations(rows, tuned=tuned, control=control, settings=settings, confidence=confidence)
    table = [("scenario", "recommended", f"gain over {control} (pp)")]
    for row in found:
        method = row.method if row.method is not None else f"none (best: {row.best or '-'})"
        table.append((row.scenario, method, "-" if row.gain is None else str(row.gain)))
    widths = [max(len(line[column]) for line in table) for column in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in table)


def render_guidance(
    rows: Sequence[Mapping[str, Any]],
    *,
    tuned: str | Sequence[str],
    control: str,
    settings: Sequence[str] = (),
    confidence: float = 0.95,
) -> list[str]:
    """Markdown lines: per scenario, the method with the highest mean gain over the control, how sure, tuned settings.

    The table of :func:`render_guidance_page`, under a heading for ``summary.md``. A method is recommended only
    where its gain over the control, paired by seed, has an interval wholly above 0 that is evidence (from at
    least :data:`~kdlightning.stats.MIN_SEEDS` seeds, with some spread); otherwise the row says no method beats the
    control here, and names the best one with its gain.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": 0, "method": "student_only", "acc_before": 0.5, "acc_after": 0.6},
        ...     {"scenario": "iid", "seed": 0, "method": "dpkd", "acc_before": 0.5, "acc_after": 0.65},
        ... ]
        >>> guidance = render_guidance(rows, tuned=[], control="student_only")
        >>> for cell in guidance[-1].split(" | ")[1:]:  # one seed is no evidence: no recommendation
        ...     print(cell)
        none: no method beats the control here
        best: dpkd +5.00 [no interval]
        one seed: no interval; wins 100% of 1 seeds |
    """
    rows = _with_gains(rows, control)
    return ["## Which method here", "", *_guidance_table(rows, _tuned_names(tuned), control, settings, confidence)]


def render_guidance_page(
    rows: Sequence[Mapping[str, Any]],
    *,
    tuned: str | Sequence[str],
    control: str,
    settings: Sequence[str] = (),
    confidence: float = 0.95,
) -> str:
    """A Markdown page: which method for which distribution, generated from a study's ``results.csv`` rows.

    One row per scenario: the recommended method (the highest mean gain over the control, paired by seed, where
    its interval lies above 0 and is evidence; else "no method beats the control here"), that gain with its
    interval, how sure (whether the interval excludes 0, whether it is clearly ahead of the runner-up, its win
    rate), and the settings each tuned method's search chose on most seeds, with its validation.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": after}
        ...     for seed in (0, 1)
        ...     for method, after in (("student_only", 0.60), ("dml", 0.61 + seed / 100), ("dpkd", 0.62))
        ... ]
        >>> print(render_guidance_page(rows, tuned=[], control="student_only").splitlines()[0])
        # Guidance: which method for which distribution
    """
    rows = _with_gains(rows, control)
    seeds = _seeds(rows)
    return (
        "\n".join(
            [
                "# Guidance: which method for which distribution",
                "",
                "Generated from `results.csv` by `kdlightning.reporting.render_guidance_page`, over "
                f"{len(seeds)} seeds {seeds}; gains in percentage points over the control ({control}, the student "
                "trained alone for as long).",
                "",
                *_guidance_table(rows, _tuned_names(tuned), control, settings, confidence),
            ]
        )
        + "\n"
    )


def plot_gains(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    control: str,
    title: str = "",
    confidence: float = 0.95,
) -> None:
    """Bar charts of the accuracy gain and the gain over the control per method × scenario, with intervals (PNG).

    The error bars are the intervals of :func:`summarize` (the gain's t-interval) and of :func:`paired_gains`
    (the paired difference's). The title names ``title`` (the data set) and the seeds.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _with_gains(rows, control)
    scenarios = list(dict.fromkeys(str(r["scenario"]) for r in rows))
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    figure = Figure(figsize=(max(6.4, 1.6 * len(scenarios) + 2), 7.2), layout="constrained")
    FigureCanvasAgg(figure)
    seeds = _seeds(rows)
    what = f"accuracy gain, mean and {confidence:.0%} interval over {len(seeds)} seeds {seeds}"
    figure.suptitle(f"{title}: {what}" if title else what[0].upper() + what[1:], fontsize=11)
    width = 0.8 / max(len(methods), 1)
    over = {key: result.difference for key, result in paired_gains(rows, control, confidence).items()}
    panels = (
        (summarize(rows, "gain_pp", confidence), "accuracy gain (pp)"),
        (over, f"gain over {control} (pp), paired by seed"),
    )
    for index, (table, label) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, index + 1)
        for m, method in enumerate(methods):
            cells = [table.get((scenario, method)) for scenario in scenarios]
            bounds = [cell if cell is not None and cell.has_bounds else None for cell in cells]
            axes.bar(
                [i + (m - (len(methods) - 1) / 2) * width for i in range(len(scenarios))],
                [cell.mean if cell else 0.0 for cell in cells],
                width,
                yerr=[
                    [cell.mean - cell.low if cell else 0.0 for cell in bounds],
                    [cell.high - cell.mean if cell else 0.0 for cell in bounds],
                ],
                capsize=2,
                label=method,
            )
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
        axes.set_ylabel(label)
        if index == 0:
            axes.legend(fontsize=8, ncols=min(len(methods), 5))
    save_figure(figure, path)
