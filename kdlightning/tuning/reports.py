"""A search's outputs from its trials: rows (``trials.csv``), text lines and table, and the heatmap.

Pure functions of the rows and the searched space, so the search and the study (which draws a heatmap
per scenario from rows averaged over seeds) share them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from kdlightning.atomic import save_figure
from kdlightning.tuning.options import Param
from kdlightning.tuning.results import TuneResult, value_of

__all__ = [
    "describe_row",
    "draw_heatmap",
    "format_best",
    "format_cell",
    "format_gain",
    "format_table",
    "plot_heatmap",
    "short_names",
    "trial_rows",
]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Column name of each searched key: its argument name (``temperature``), or the key if names collide."""
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    return short if len(set(short.values())) == len(short) else {key: key for key in keys}


def trial_rows(
    trials: Sequence[FrozenTrial], keys: Sequence[str], metric: str, val_before: float
) -> list[dict[str, Any]]:
    """One row per trial: number, state, values, metric, gain over the student before training, epochs, time.

    Args:
        trials: the study's trials (waiting ones are left out).
        keys: the searched keys, in search order (columns by :func:`short_names`).
        metric: the validation metric.
        val_before: the metric of the student before training (NaN: no gains).
    """
    names = short_names(keys)
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.WAITING:
            continue
        value: float | None = None
        if trial.state == TrialState.COMPLETE:
            value = value_of(trial)
        elif trial.intermediate_values:
            value = float(trial.intermediate_values[max(trial.intermediate_values)])
        elif trial.state == TrialState.PRUNED and trial.user_attrs.get("val_curve"):
            value = float(trial.user_attrs["val_curve"][-1])
        start, end = trial.datetime_start, trial.datetime_complete
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        row.update({names[key]: trial.params.get(key) for key in keys})
        row[metric] = value
        row["val_gain"] = value - val_before if value is not None and math.isfinite(val_before) else None
        row["val_loss"] = trial.user_attrs.get("val_loss")
        row["epochs"] = trial.user_attrs.get("epochs")
        killed = trial.state == TrialState.FAIL and "error" not in trial.user_attrs  # ended when found dead
        row["duration_s"] = round((end - start).total_seconds(), 3) if start and end and not killed else None
        row["same_as"] = trial.user_attrs.get("same_as")
        row["retry_of"] = trial.system_attrs.get("failed_trial")
        row["error"] = trial.user_attrs.get("error")
        rows.append(row)
    return rows


def format_gain(gain: float, metric: str) -> str:
    """A gain in percentage points for an accuracy, else as is."""
    return f"{100 * gain:+.2f} pp" if metric.endswith("acc") else f"{gain:+.4f}"


def format_cell(column: str, value: Any, metric: str) -> str:
    """A row's value as text."""
    if value is None:
        return "-"
    if column == "val_gain":
        return format_gain(value, metric)
    if column == metric:
        return f"{value:.4f}"
    if column == "duration_s":
        return f"{value:.1f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_row(row: Mapping[str, Any], names: Sequence[str], metric: str) -> str:
    """One trial on one line: its values, state, metric and gain, epochs and time."""
    text = "  ".join(f"{name}={format_cell(name, row[name], metric)}" for name in names) + f"  {row['state']}"
    if row[metric] is not None:
        gain = format_cell("val_gain", row["val_gain"], metric)
        text += f"  {metric}={format_cell(metric, row[metric], metric)} ({gain})"
    if row["epochs"] is not None:
        text += f"  {row['epochs']} epochs"
    if row["duration_s"] is not None:
        text += f"  {row['duration_s']:.1f} s"
    return text


def format_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], metric: str) -> str:
    """The trials as a fixed-width text table (``names``: the searched columns)."""
    columns = ["number", "state", *names, metric, "val_gain", "epochs", "duration_s"]
    cells = [[format_cell(column, row[column], metric) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(r[i]) for r in cells]) for i, column in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def format_best(result: TuneResult, metric: str) -> str:
    """The chosen point, its gain over the student before training and (if tested) its test metrics."""
    names = short_names(list(result.best_params))
    values = "  ".join(f"{names[key]}={value:g}" for key, value in result.best_params.items())
    gain = format_gain(result.best_value - result.val_before, metric)
    text = f"best: trial {result.best_trial}  {values}  {metric}={result.best_value:.4f}"
    text += f" ({gain} over the student before training)"
    if result.test_metrics:
        tested = "  ".join(f"{key}={value:.4f}" for key, value in sorted(result.test_metrics.items()))
        text += f"\n      test ({result.test_model}): {tested}"
    return text + f"\n      files: {result.out}"


def plot_heatmap(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    space: Mapping[str, Param],
    metric: str,
    *,
    direction: str = "maximize",
    title: str | None = None,
    chosen: Sequence[Mapping[str, float]] = (),
) -> None:
    """Validation gain over the grid as a PNG: :func:`draw_heatmap` on a figure of its own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    draw_heatmap(figure.add_subplot(), rows, space, metric, direction=direction, title=title, chosen=chosen)
    save_figure(figure, path)


def draw_heatmap(
    axes: Any,
    rows: Sequence[Mapping[str, Any]],
    space: Mapping[str, Param],
    metric: str,
    *,
    direction: str = "maximize",
    title: str | None = None,
    chosen: Sequence[Mapping[str, float]] = (),
) -> None:
    """Draw validation gain on matplotlib ``axes``: a heatmap over the first two searched arguments.

    Each cell shows the gain of the best finished row at that point (percentage points for accuracy);
    other arguments, if any, are maximised over. Pruned and failed points are marked. With a continuous
    range in ``space``, a scatter of the rows.

    Args:
        axes: matplotlib axes.
        rows: rows as :func:`trial_rows` writes them (``state``, ``val_gain`` and a column per argument).
        space: the searched space (:func:`~kdlightning.tuning.options.check_space`); the first key is the y axis.
        metric: the validation metric (an accuracy's gains are drawn in percentage points).
        direction: ``maximize`` or ``minimize``: which gain is the best of a cell.
        title: the title (default: the metric's gain over the student before training).
        chosen: the chosen points (one per search, by short argument name): circled on a grid, with how
            many searches chose each when several did.
    """
    keys = list(space)
    names = list(short_names(keys).values())
    y_name, x_name = names[0], names[1] if len(names) > 1 else None
    scale = 100.0 if metric.endswith("acc") else 1.0
    unit = " (pp)" if scale == 100.0 else ""
    sign = 1.0 if direction == "maximize" else -1.0
    figure = axes.figure
    finished = [r for r in rows if r[y_name] is not None and (x_name is None or r[x_name] is not None)]
    ys = sorted({r[y_name] for r in finished})
    xs = sorted({r[x_name] for r in finished}) if x_name else [0.0]
    if all(p.values is not None for p in space.values()):
        import numpy as np
        from matplotlib.patches import Rectangle

        grid = np.full((len(ys), len(xs)), np.nan)
        marks: dict[tuple[int, int], str] = {}
        for r in finished:
            i, j = ys.index(r[y_name]), xs.index(r[x_name]) if x_name else 0
            if r["state"] == "COMPLETE" and r["val_gain"] is not None:
                gain = scale * r["val_gain"]
                if math.isnan(grid[i, j]) or sign * gain > sign * grid[i, j]:
                    grid[i, j] = gain
            elif math.isnan(grid[i, j]):
                marks[(i, j)] = r["state"].lower()
        image = axes.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
        figure.colorbar(image, ax=axes, label=f"validation gain{unit}")
        middle = (np.nanmin(grid) + np.nanmax(grid)) / 2 if not np.isnan(grid).all() else 0.0
        for (i, j), value in np.ndenumerate(grid):
            text = f"{value:+.1f}" if not math.isnan(value) else marks.get((i, j), "")
            color = "black" if not math.isnan(value) and value > middle else "white"
            axes.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
        axes.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        axes.set_xticks(range(len(xs)), [f"{x:g}" for x in xs] if x_name else [""])
        picks: dict[tuple[int, int], int] = {}
        for point in chosen:
            y, x = point.get(y_name), point.get(x_name) if x_name else 0.0
            if y in ys and x in xs:
                cell = (ys.index(y), xs.index(x) if x_name else 0)
                picks[cell] = picks.get(cell, 0) + 1
        for (i, j), count in picks.items():
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
            if count > 1:
                axes.text(j + 0.45, i + 0.45, f"{count} seeds", ha="right", va="top", color="red", fontsize=7)
    else:
        done = [r for r in finished if r["val_gain"] is not None]
        points = axes.scatter(
            [r[x_name] if x_name else 0.0 for r in done],
            [r[y_name] for r in done],
            c=[scale * r["val_gain"] for r in done],
            cmap="viridis",
            marker="o",
        )
        figure.colorbar(points, ax=axes, label=f"validation gain{unit}")
        if space[keys[0]].log:
            axes.set_yscale("log")
    axes.set_ylabel(y_name)
    axes.set_xlabel(x_name or "")
    axes.set_title(title if title is not None else f"{metric} gain over the student before training", fontsize=10)
