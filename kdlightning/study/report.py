"""What a study writes from its rows: its results, summary, guidance, gains plot and tuning heatmaps.

:class:`StudyReports`, a base class of :class:`~kdlightning.study.Study`, writes ``results.csv``,
``summary.md``, ``guidance.md``, ``gains.png`` and ``tuning.png`` (``tuning_public.png``).

The tables themselves are :func:`kdlightning.reporting.render_summary`'s and
:func:`kdlightning.reporting.render_guidance_page`'s; the gains plot is :func:`kdlightning.reporting.plot_gains`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.atomic import save_figure, write_text_atomic
from kdlightning.methods import VanillaKD
from kdlightning.reporting import (
    add_gains,
    is_failed,
    plot_gains,
    read_csv,
    render_guidance_page,
    render_summary,
    write_csv,
)
from kdlightning.study.cells import TUNED_NAMES
from kdlightning.tuning.options import Param, TuneOptions, check_space
from kdlightning.tuning.reports import draw_heatmap, short_names

__all__ = ["StudyReports", "chosen_points", "mean_validation_gains", "plot_tuning"]


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
    save_figure(figure, path)


class StudyReports:
    """What a :class:`~kdlightning.study.Study` writes from its rows.

    ``results.csv``, ``summary.md``, ``guidance.md`` and the plots; a base class of the study, using its settings
    (data set, parties, methods, tuned KD's searches).
    """

    out: Path
    control: str
    seeds: list[int]
    methods: dict[str, Any]
    scenarios: list[Any]
    tuned_kd: bool
    tuning: TuneOptions
    num_parties: int
    student_party: int
    teacher_party: int
    pretrain_epochs: int
    epochs: int
    dataset: Any
    tuned_names: list[str]
    validation_of: Callable[[str], str]
    tuning_dir: Callable[..., Path]

    def save(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``results.csv`` (with the gains), ``summary.md`` and ``guidance.md`` from ``rows``, atomically."""
        write_csv(self.out / "results.csv", add_gains(rows, control=self.control))
        write_text_atomic(self.out / "summary.md", self.summary(rows))
        write_text_atomic(self.out / "guidance.md", self.guidance(rows))

    def _untuned(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        methods = dict.fromkeys([*self.methods, *(str(row["method"]) for row in rows)])
        return [name for name in methods if name != self.control and name not in TUNED_NAMES.values()]

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``summary.md`` of ``rows`` (with the seeds and methods of earlier runs of the study)."""
        seeds = list(dict.fromkeys([*self.seeds, *(int(row["seed"]) for row in rows)]))
        header = (
            f"# Study: {type(self.dataset).__name__}, {self.num_parties} parties "
            f"(student {self.student_party}, teacher {self.teacher_party}), seeds {seeds}, "
            f"{self.pretrain_epochs} pre-training epochs, {self.epochs} epochs per method\n\n"
        )
        rows = add_gains(rows, control=self.control)
        return header + render_summary(rows, tuned=self.tuned_names, untuned=self._untuned(rows), control=self.control)

    def guidance(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``guidance.md``: which method for which distribution, generated from ``rows`` (``results.csv``)."""
        return render_guidance_page(add_gains(rows, control=self.control), tuned=self.tuned_names, control=self.control)

    def plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write the study's plots: ``gains.png`` and, with tuned KD, ``tuning.png`` (``tuning_public.png``).

        ``gains.png`` shows the gain and the gain over the control per method × scenario; ``tuning.png`` the
        validation gain over the grid per scenario, mean over seeds (``tuning_public.png``: on the public split).
        """
        title = f"{type(self.dataset).__name__}, {self.num_parties} parties"
        plot_gains(rows, self.out / "gains.png", control=self.control, title=title)
        space = check_space(self.tuning, VanillaKD) if self.tuned_kd else {}
        for name in self.tuned_names:
            validation = self.validation_of(name)
            panels = []
            for scenario in self.scenarios:
                trials = [self.tuning_dir(scenario, seed, validation) / "trials.csv" for seed in self.seeds]
                points = mean_validation_gains(trials, space)
                if points:
                    panels.append((str(scenario), points, chosen_points(rows, str(scenario), name)))
            tuning, file = self.tuning, "tuning.png" if validation == "own" else f"tuning_{validation}.png"
            plot_tuning(self.out / file, panels, space, tuning.metric, tuning.direction, len(self.seeds))
