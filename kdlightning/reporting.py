"""Pure summaries of study results: accuracy gains per method and scenario, and the study's metric.

Nothing here trains or imports Lightning: a study's ``results.csv`` rows go in, numbers and Markdown
come out, so ``summary.md`` can always be recomputed from ``results.csv``.

A row is a mapping with at least ``scenario``, ``seed``, ``method``, ``acc_before`` and
``acc_after`` (accuracies in ``[0, 1]`` on the global test set). The **gain** of a run is
``100 * (acc_after - acc_before)`` percentage points; its **gain over the control** subtracts the
gain of the control method (the student trained alone for the same epochs) of the same scenario
and seed. A **failed** run (a diverging method) has a non-empty ``error`` and no ``acc_after``: it is
counted and listed, and left out of every statistic.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlightning.atomic import atomic_path, write_text_atomic

__all__ = [
    "Cell",
    "add_gains",
    "error_line",
    "is_failed",
    "plot_gains",
    "read_csv",
    "render_guidance",
    "render_summary",
    "summarize",
    "tuned_improvement",
    "write_csv",
]


@dataclass(frozen=True)
class Cell:
    """Mean and sample standard deviation of a gain over seeds (``std`` is 0 for one seed)."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.2f} ± {self.std:.2f}"


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
        >>> is_failed({"error": "FloatingPointError: Non-finite training loss"}), is_failed({"error": ""})
        (True, False)
    """
    return bool(row.get("error"))


def add_gains(rows: Iterable[Mapping[str, Any]], control: str = "student_only") -> list[dict[str, Any]]:
    """Return the rows with ``gain_pp`` and ``gain_over_control_pp``.

    Both are None for a failed run (:func:`is_failed`); the gain over the control is None too where the
    control of the same scenario and seed is missing or failed.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": 0, "method": "student_only", "acc_before": 0.80, "acc_after": 0.82},
        ...     {"scenario": "iid", "seed": 0, "method": "vanilla_kd", "acc_before": 0.80, "acc_after": 0.85},
        ... ]
        >>> [(r["method"], round(r["gain_pp"], 2), round(r["gain_over_control_pp"], 2)) for r in add_gains(rows)]
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


def _cell(values: Sequence[float]) -> Cell:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return Cell(mean, std, len(values))


def summarize(rows: Iterable[Mapping[str, Any]], key: str = "gain_pp") -> dict[tuple[str, str], Cell]:
    """Mean ± std of ``key`` over seeds, per ``(scenario, method)``; rows where ``key`` is None or empty are skipped.

    Examples:
        >>> rows = [{"scenario": "iid", "method": "kd", "gain_pp": g} for g in (1.0, 3.0)]
        >>> str(summarize(rows)[("iid", "kd")])
        '+2.00 ± 1.41'
    """
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row.get(key) in (None, ""):  # a failed run, or a missing control
            continue
        groups.setdefault((str(row["scenario"]), str(row["method"])), []).append(float(row[key]))
    return {group: _cell(values) for group, values in groups.items()}


def tuned_improvement(
    summary: Mapping[tuple[str, str], Cell],
    tuned: str = "tuned_kd",
    untuned: Sequence[str] = ("vanilla_kd", "dml", "dpkd"),
) -> dict[str, float | None]:
    r"""The study's metric per scenario: tuned KD's mean gain relative to the best untuned method's.

    .. math::
        100 \cdot \frac{g_{tuned} - \max_m g_m}{|\max_m g_m|}

    None where a method is missing or the best untuned gain is 0.

    Examples:
        >>> from kdlightning.reporting import Cell
        >>> s = {("iid", "tuned_kd"): Cell(1.16, 0, 1), ("iid", "vanilla_kd"): Cell(1.0, 0, 1)}
        >>> round(tuned_improvement(s, untuned=("vanilla_kd", "dml"))["iid"], 1)
        16.0
    """
    scenarios = sorted({scenario for scenario, _ in summary})
    out: dict[str, float | None] = {}
    for scenario in scenarios:
        best = [summary[(scenario, m)].mean for m in untuned if (scenario, m) in summary]
        if (scenario, tuned) not in summary or not best or max(best) == 0:
            out[scenario] = None
            continue
        out[scenario] = 100.0 * (summary[(scenario, tuned)].mean - max(best)) / abs(max(best))
    return out


def render_summary(
    rows: Sequence[Mapping[str, Any]],
    iid_scenarios: Sequence[str] = ("iid",),
    tuned: str = "tuned_kd",
    untuned: Sequence[str] = ("vanilla_kd", "dml", "dpkd"),
    control: str = "student_only",
) -> str:
    """``summary.md``: gain and gain over the control per method × scenario, and tuned KD's relative improvement.

    A cell with failed runs says how many (its statistics leave them out); the failed runs and their errors
    are listed at the end.
    """
    rows = add_gains(rows, control=control) if rows and "gain_pp" not in rows[0] else list(rows)
    scenarios = list(dict.fromkeys(str(r["scenario"]) for r in rows))
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    failures = Counter((str(r["scenario"]), str(r["method"])) for r in rows if is_failed(r))
    lines = []
    for title, key in (
        ("Accuracy gain (pp)", "gain_pp"),
        ("Accuracy gain over the control (pp)", "gain_over_control_pp"),
    ):
        table = summarize(rows, key)
        lines += [f"## {title}, mean ± std over seeds", "", "| method | " + " | ".join(scenarios) + " |"]
        lines.append("|---|" + "---|" * len(scenarios))
        for method in methods:
            cells = [_with_failures(table.get((s, method)), failures[(s, method)]) for s in scenarios]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    improvement = tuned_improvement(summarize(rows, "gain_pp"), tuned, untuned)

    gains = summarize(rows, "gain_pp")
    lines += [f"## Relative improvement of {tuned} over the best untuned method", ""]
    lines += [f"| scenario | best untuned method | its gain (pp) | {tuned} gain (pp) | difference (pp) | improvement |"]
    lines.append("|---|---|---|---|---|---|")
    for scenario in scenarios:
        value = improvement.get(scenario)
        present = [m for m in untuned if (scenario, m) in gains]
        best = max(present, key=lambda m: gains[(scenario, m)].mean) if present else None
        mine = gains.get((scenario, tuned))
        cells = [
            best or "-",
            "-" if best is None else f"{gains[(scenario, best)].mean:+.2f}",
            "-" if mine is None else f"{mine.mean:+.2f}",
            "-" if best is None or mine is None else f"{mine.mean - gains[(scenario, best)].mean:+.2f}",
            "-" if value is None else f"{value:+.1f}%",
        ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    non_iid = [v for s, v in improvement.items() if s not in iid_scenarios and v is not None]
    iid = [v for s, v in improvement.items() if s in iid_scenarios and v is not None]
    lines.append("")
    if iid:
        lines.append(f"IID: {sum(iid) / len(iid):+.1f}% (the study reports +16%).")
    if non_iid:
        ordered = sorted(non_iid)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        lines.append(
            f"Non-IID average: {sum(non_iid) / len(non_iid):+.1f}% (the study reports +139%); median {median:+.1f}% "
            f"over {len(non_iid)} scenarios (a relative figure is large where the best untuned gain is near 0)."
        )
    lines += ["", *render_guidance(rows, tuned, control), *_render_failures(rows)]
    return "\n".join(lines) + "\n"


def _with_failures(cell: Cell | None, failed: int) -> str:
    """A summary cell: mean ± std of the runs that finished, and how many failed."""
    text = "-" if cell is None else str(cell)
    if not failed:
        return text
    return f"{failed} failed" if cell is None else f"{text} ({failed} failed)"


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


def render_guidance(
    rows: Sequence[Mapping[str, Any]], tuned: str = "tuned_kd", control: str = "student_only"
) -> list[str]:
    """Markdown lines: per scenario, the methods ranked by mean gain over the control, and tuned KD's choices.

    Examples:
        >>> rows = [
        ...     {"scenario": "iid", "seed": 0, "method": "student_only", "acc_before": 0.5, "acc_after": 0.6},
        ...     {"scenario": "iid", "seed": 0, "method": "dpkd", "acc_before": 0.5, "acc_after": 0.65},
        ... ]
        >>> render_guidance(rows)[4]
        '| iid | dpkd (+5.00) | - | - |'
    """
    rows = add_gains(rows, control=control)
    table = summarize(rows, "gain_over_control_pp")
    lines = [
        "## Which method here: ranked by mean gain over the control (pp)",
        "",
        f"| scenario | best | runner-up | {tuned}: chosen (temperature, alpha) per seed |",
        "|---|---|---|---|",
    ]
    for scenario in dict.fromkeys(str(r["scenario"]) for r in rows):
        ranked = sorted(
            ((cell.mean, method) for (s, method), cell in table.items() if s == scenario and method != control),
            reverse=True,
        )
        cells = [f"{method} ({mean:+.2f})" for mean, method in ranked[:2]]
        cells += ["-"] * (2 - len(cells))
        chosen = []
        for row in rows:
            if str(row["scenario"]) == scenario and row["method"] == tuned and not is_failed(row):
                text = row.get("hyperparameters")
                values = json.loads(text) if isinstance(text, str) and text else {}
                if "temperature" in values and "alpha" in values:
                    chosen.append(f"({values['temperature']:g}, {values['alpha']:g})")
        lines.append(f"| {scenario} | " + " | ".join([*cells, ", ".join(chosen) or "-"]) + " |")
    return lines


def plot_gains(
    rows: Sequence[Mapping[str, Any]], path: str | Path, control: str = "student_only", title: str = ""
) -> None:
    """Bar charts of the accuracy gain and the gain over the control, mean ± std per method × scenario (PNG).

    The title names ``title`` (the data set) and the seeds the means are taken over.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = add_gains(rows, control=control) if rows and "gain_pp" not in rows[0] else list(rows)
    scenarios = list(dict.fromkeys(str(r["scenario"]) for r in rows))
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    figure = Figure(figsize=(max(6.4, 1.6 * len(scenarios) + 2), 7.2), layout="constrained")
    FigureCanvasAgg(figure)
    seeds = sorted({int(r["seed"]) for r in rows})
    heading = f"{title}: accuracy gain, mean ± std over {len(seeds)} seeds {seeds}" if title else ""
    figure.suptitle(heading or f"Accuracy gain, mean ± std over {len(seeds)} seeds {seeds}", fontsize=11)
    width = 0.8 / max(len(methods), 1)
    panels = (("gain_pp", "accuracy gain (pp)"), ("gain_over_control_pp", f"gain over {control} (pp)"))
    for index, (key, label) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, index + 1)
        table = summarize(rows, key)
        for m, method in enumerate(methods):
            cells = [table.get((scenario, method)) for scenario in scenarios]
            axes.bar(
                [i + (m - (len(methods) - 1) / 2) * width for i in range(len(scenarios))],
                [c.mean if c else 0.0 for c in cells],
                width,
                yerr=[c.std if c else 0.0 for c in cells],
                capsize=2,
                label=method,
            )
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
        axes.set_ylabel(label)
        if index == 0:
            axes.legend(fontsize=8, ncols=min(len(methods), 5))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


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
