"""What a study writes besides ``results.csv``: the summary's header and the tuning heatmaps.

The tables themselves are :func:`kdlightning.reporting.render_summary`'s; the gains plot is
:func:`kdlightning.reporting.plot_gains`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.atomic import atomic_path
from kdlightning.reporting import is_failed, read_csv
from kdlightning.tuning.options import Param
from kdlightning.tuning.reports import draw_heatmap, short_names

__all__ = ["chosen_points", "mean_validation_gains", "plot_tuning"]


def mean_validation_gains(trials: Sequence[Path], space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """One point per searched value, its validation gain averaged over the searches' ``trials.csv`` files."""
    names = list(short_names(list(space)).values())
    gains: dict[tuple[float, ...], list[float]] = {}
    for path in trials:
        for row in read_csv(path):
            if row["state"] == "COMPLETE" and row.get("val_gain"):
                gains.setdefault(tuple(float(row[n]) for n in names), []).append(float(row["val_gain"]))
    return [
        {**dict(zip(names, point, strict=True)), "state": "COMPLETE", "val_gain": sum(g) / len(g)}
        for point, g in gains.items()
    ]


def chosen_points(rows: Sequence[Mapping[str, Any]], scenario: str, method: str) -> list[dict[str, Any]]:
    """The values tuned KD (``method``) chose in ``scenario``, one per seed that did not fail (from ``results.csv``)."""
    return [
        json.loads(str(row["hyperparameters"]))
        for row in rows
        if row["scenario"] == scenario and row["method"] == method and row.get("hyperparameters") and not is_failed(row)
    ]


def plot_tuning(
    path: Path,
    panels: Sequence[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]],
    space: Mapping[str, Param],
    metric: str,
    direction: str,
    seeds: int,
) -> None:
    """Write one heatmap per ``(scenario, points, chosen)`` panel to ``path`` (nothing when there are none).

    ``chosen`` are the points tuned KD chose in that scenario, one per seed: framed in red.
    """
    if not panels:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(len(panels), 2)  # two panels across stay readable at a page's width
    lines = -(-len(panels) // columns)
    figure = Figure(figsize=(5.0 * columns, 3.9 * lines), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"Tuned KD: validation gain over the grid, mean of {seeds} seeds; chosen points framed in red")
    for index, (scenario, points, chosen) in enumerate(panels):
        axes = figure.add_subplot(lines, columns, index + 1)
        draw_heatmap(axes, points, space, metric, direction=direction, title=scenario, chosen=chosen)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
