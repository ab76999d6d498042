"""What a study writes from its rows: its results, summary, guidance, gains plot and tuning heatmaps.

:class:`StudyReport` writes ``results.csv``, ``summary.md``, ``guidance.md``, ``gains.png`` and ``tuning.png``
(``tuning_public.png``).

The tables themselves are :func:`kdlightning.reporting.render_summary`'s and
:func:`kdlightning.reporting.render_guidance_page`'s; the gains plot is :func:`kdlightning.reporting.plot_gains`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.atomic import save_figure, write_text_atomic
from kdlightning.reporting import (
    add_gains,
    hyperparameters_of,
    is_failed,
    plot_gains,
    read_csv,
    render_guidance_page,
    render_guidance_text,
    render_summary,
    slug,
    write_csv,
)
from kdlightning.reporting.tuned import counterparts
from kdlightning.study.config import StudyConfig, TunedRun
from kdlightning.tuning.options import Param, check_space
from kdlightning.tuning.reports import draw_heatmap, short_names

__all__ = ["StudyReport", "chosen_points", "mean_validation_gains", "plot_tuning"]


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
        hyperparameters_of(row)
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
    name: str = "tuned_kd",
) -> None:
    """Write one heatmap per ``(scenario, points, chosen)`` panel to ``path`` (nothing when there are none).

    ``chosen`` are the points the tuned run ``name`` chose in that scenario, one per seed: framed in red.
    """
    if not panels:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(len(panels), 2)  # two panels across stay readable at a page's width
    lines = -(-len(panels) // columns)
    figure = Figure(figsize=(5.0 * columns, 3.9 * lines), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"{name}: validation gain over the grid, mean of {seeds} seeds; chosen points framed in red")
    for index, (scenario, points, chosen) in enumerate(panels):
        axes = figure.add_subplot(lines, columns, index + 1)
        draw_heatmap(axes, points, space, metric, direction=direction, title=scenario, chosen=chosen)
    save_figure(figure, path)


class StudyReport:
    """What a study writes from its rows: ``results.csv``, ``summary.md``, ``guidance.md`` and the plots.

    Args:
        config: the study's configuration (its data set, parties, methods, tuned KD's searches).
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config

    def save(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``results.csv`` (with the gains), ``summary.md`` and ``guidance.md`` from ``rows``, atomically."""
        out = self.config.out
        write_csv(out / "results.csv", add_gains(rows, control=self.config.control))
        write_text_atomic(out / "summary.md", self.summary(rows))
        write_text_atomic(out / "guidance.md", self.guidance(rows))

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``summary.md`` of ``rows`` (with the seeds and methods of earlier runs of the study)."""
        config = self.config
        seeds = list(dict.fromkeys([*config.seeds, *(int(row["seed"]) for row in rows)]))
        header = (
            f"# Study: {type(config.dataset).__name__}, {config.num_parties} parties "
            f"(student {config.student_party}, teacher {config.teacher_party}), seeds {seeds}, "
            f"{config.pretrain_epochs} pre-training epochs"
            + (f" ({config.teacher_pretrain_epochs} for the teacher)" if config.teacher_pretrain_epochs else "")
            + f", {config.epochs} epochs per method\n\n"
        )
        rows = add_gains(rows, control=config.control)
        untuned = config.untuned_names(rows)
        methods = {name: run.method for name, run in config.tuned_runs.items()}
        return header + render_summary(
            rows,
            tuned=config.tuned_names,
            untuned=untuned,
            control=config.control,
            settings=config.tuned_settings,
            pairs=counterparts(rows, methods, untuned),
        )

    def guidance(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``guidance.md``: which method for which distribution, generated from ``rows`` (``results.csv``)."""
        config = self.config
        return render_guidance_page(
            add_gains(rows, control=config.control),
            tuned=config.tuned_names,
            control=config.control,
            settings=config.tuned_settings,
        )

    def ending(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """What ``kdl study`` ends with: per scenario the recommended method and its gain, then the files to read.

        A short plain-text table (:func:`~kdlightning.reporting.render_guidance_text`), the guidance of
        ``guidance.md`` in brief, and the paths of ``summary.md``, ``guidance.md`` and ``gains.png``.
        """
        config, out = self.config, self.config.out
        table = render_guidance_text(
            add_gains(rows, control=config.control),
            tuned=config.tuned_names,
            control=config.control,
            settings=config.tuned_settings,
        )
        files = [
            ("summary", out / "summary.md", "every method's gain with its interval, tuned against untuned"),
            ("guidance", out / "guidance.md", "the recommendation per scenario, how sure, the tuned settings"),
            ("plot", out / "gains.png", "the gains per method and scenario"),
        ]
        width = max(len(name) for name, _, _ in files)
        return "\n".join(
            [
                "Which method per scenario: the highest mean gain over the control, paired by seed,",
                "recommended where its 95% interval lies above 0 (else none, the best in brackets):",
                "",
                table,
                "",
                *(f"{name + ':':<{width + 1}} {path}  ({what})" for name, path, what in files),
            ]
        )

    def plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write the study's plots: ``gains.png`` and, with tuned KD, ``tuning.png`` (``tuning_public.png``).

        ``gains.png`` shows the gain and the gain over the control per method × scenario; ``tuning.png`` the
        validation gain over the grid per scenario, mean over seeds (``tuning_public.png``: on the public split).
        """
        config = self.config
        title = f"{type(config.dataset).__name__}, {config.num_parties} parties"
        plot_gains(rows, config.out / "gains.png", control=config.control, title=title)
        space = check_space(config.tuning, None, section="tuning") if config.tuned_runs else {}
        for name, run in config.tuned_runs.items():
            panels = []
            for scenario in config.scenarios:
                trials = [
                    config.tuning_dir(scenario, seed, run.validation, run.method) / "trials.csv"
                    for seed in config.seeds
                ]
                points = mean_validation_gains(trials, space)
                if points:
                    panels.append((str(scenario), points, chosen_points(rows, str(scenario), name)))
            tuning, file = config.tuning, f"{_plot_name(run)}.png"
            plot_tuning(config.out / file, panels, space, tuning.metric, tuning.direction, len(config.seeds), name)


def _plot_name(run: TunedRun) -> str:
    """The tuning plot of a tuned run: ``tuning[_public]`` for tuned KD, ``tuning_<method>[_public]``."""
    method = "" if run.method is None else f"_{slug(run.method)}"
    return f"tuning{method}" + ("" if run.validation == "own" else f"_{run.validation}")
