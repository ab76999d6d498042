"""What an experiment across scenarios and seeds writes in its ``out`` (:class:`ExperimentRecords`).

- ``rounds.csv``: every cell's rows (start, round, test accuracy, ...) with a ``scenario`` and a ``seed`` column.
- ``summary.md``: per scenario and start, the total rounds to the target and the reduction in total rounds against
  ``fresh`` (the collection round counted in), each a mean with its t-interval over seeds
  (:mod:`kdlightning.stats`); the consolidated start against each other start as a difference paired by seed;
  beside the paper's figure (:data:`~kdlightning.federated.aggregate.PAPER_REDUCTION`). A seed's figures are
  :func:`~kdlightning.federated.aggregate.start_results`'s, censored counts included and counted.
- ``accuracy.png``: per scenario, each start's mean test accuracy over seeds with its interval, and the targets.

A cell is one federation of the experiment: a ``(scenario, seed)`` pair, :data:`CellKey`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.atomic import save_figure, write_text_atomic
from kdlightning.federated.aggregate import PAPER_REDUCTION, StartResult, Targets, accuracy_curves, start_results
from kdlightning.reporting import write_csv
from kdlightning.stats import Interval, mean_interval, paired_difference

__all__ = ["CellKey", "ExperimentRecords"]

CellKey = tuple[str, int]
"""A cell of an experiment across scenarios and seeds: its scenario's name and its seed."""


class ExperimentRecords:
    """An experiment's results in ``out``: every cell's rows, their summary over seeds and their plot.

    Args:
        out: the experiment's output directory.
        cells: the cells, in the order they run (seed by seed).
        seeds: the seeds, in order.
        starts: the starts every cell runs.
        rounds: FedAvg rounds run from each start.
        targets: what each cell's rounds are counted to.
        dataset: the data set's name, in the summary's heading.
        num_clients: number of clients, likewise.
        local_epochs: epochs each client trains per round, likewise.
        strategy: the server strategy's name, likewise.
    """

    def __init__(
        self,
        out: Path,
        cells: Sequence[CellKey],
        seeds: Sequence[int],
        starts: Sequence[str],
        rounds: int,
        targets: Targets,
        dataset: str,
        num_clients: int,
        local_epochs: int,
        strategy: str = "FedAvg",
    ) -> None:
        self.out, self.cells, self.seeds, self.starts = out, list(cells), list(seeds), list(starts)
        self.rounds, self.targets = rounds, targets
        self.dataset, self.num_clients, self.local_epochs = dataset, num_clients, local_epochs
        self.strategy = strategy
        self.scenarios = list(dict.fromkeys(name for name, _ in self.cells))

    def rows_by_cell(self, rows: Sequence[Mapping[str, Any]]) -> dict[CellKey, list[dict[str, Any]]]:
        """``rows`` grouped by cell, in the order of ``cells`` (rows of other cells are kept after them)."""
        grouped: dict[CellKey, list[dict[str, Any]]] = {key: [] for key in self.cells}
        for row in rows:
            grouped.setdefault((str(row["scenario"]), int(row["seed"])), []).append(dict(row))
        return {key: value for key, value in grouped.items() if value}

    def finished_cells(self, rows: Sequence[Mapping[str, Any]]) -> set[CellKey]:
        """The cells whose rows in ``rows`` cover every start and every round (0 .. ``rounds``)."""
        found: dict[CellKey, set[tuple[str, int]]] = {}
        for row in rows:
            found.setdefault((str(row["scenario"]), int(row["seed"])), set()).add(
                (str(row["start"]), int(row["round"]))
            )
        needed = {(start, number) for start in self.starts for number in range(self.rounds + 1)}
        return {key for key in self.cells if found.get(key, set()) >= needed}

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rounds.csv``, ``summary.md`` and ``accuracy.png`` atomically."""
        write_csv(self.out / "rounds.csv", rows)
        write_text_atomic(self.out / "summary.md", self.summary(rows))
        if rows:
            self.plot(rows)

    def per_seed(self, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, StartResult]]:
        """Per (scenario, start), per seed of a finished cell: its :func:`~kdlightning.federated.start_results`.

        Only the finished cells are read (a start cut short has not run all its rounds, so a target it has not
        reached yet is not censored). A start without a target (no ``fresh`` start) has no entry.
        """
        by_cell = self.rows_by_cell(rows)
        done = self.finished_cells(rows)
        values: dict[tuple[str, str], dict[int, StartResult]] = {}
        for scenario, seed in self.cells:
            if (scenario, seed) not in done:
                continue
            curves = accuracy_curves(by_cell.get((scenario, seed), []))
            targets = [value for _, value in self.targets.of(curves)]
            for start, result in start_results(curves, targets).items():
                if not math.isnan(result.rounds):
                    values.setdefault((scenario, start), {})[seed] = result
        return values

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``summary.md``: per scenario and start, rounds to the target and the reduction against fresh, over seeds."""
        per_seed = self.per_seed(rows)
        done = self.finished_cells(rows)
        censored_at = self.rounds + 1
        lines = [
            f"# Federated across scenarios and seeds: {self.dataset}, {self.num_clients} clients, "
            f"{self.strategy} {self.rounds} rounds x {self.local_epochs} local epoch(s)",
            "",
            f"{len(done)} of {len(self.cells)} cells finished ({len(self.scenarios)} scenario(s) x seeds "
            f"{self.seeds}). Per seed, a start's total rounds are the FedAvg rounds to each target plus the round "
            "that collects the clients' models, and its reduction is against fresh FedAvg on the same seed, both "
            "averaged over the targets (as each cell's summary.md reports them). Each cell is a mean over "
            "the seeds with its 95% t-interval in brackets: the interval holds the mean a study with many more seeds "
            f"would find, 95 times in 100. The paper reports a {PAPER_REDUCTION}% reduction on average.",
            "",
            f"Every finished seed counts. A start that does not reach a target within the {self.rounds} rounds run "
            f"counts as reaching it at round {censored_at}, the first round not run (censored): it needs at least "
            "that many, so a censored start's figure is the best it could be. Fresh FedAvg, the reference, is "
            "censored the same way, which makes the reductions against it the least they could be. Beside each "
            "figure, the seeds where it rests on a censored count.",
            "",
        ]
        for scenario in self.scenarios:
            lines += [
                f"## {scenario}",
                "",
                "| start | total rounds to target | reduction vs fresh | finished seeds | censored seeds |",
                "|---|---|---|---|---|",
            ]
            for start in self.starts:
                values = per_seed.get((scenario, start), {})
                rounds = [result.rounds for result in values.values()]
                reductions = [result.reduction for result in values.values() if not math.isnan(result.reduction)]
                rounds_cell = _rounds_text(mean_interval(rounds)) if rounds else "-"
                if start == "fresh":
                    reduction_cell = "(reference)"
                else:
                    reduction_cell = mean_interval(reductions).format(1, "%") if reductions else "n/a"
                censored = sum(result.censored for result in values.values())
                lines.append(f"| {start} | {rounds_cell} | {reduction_cell} | {len(values)} | {censored} |")
            lines += ["", *self._paired_lines(per_seed, scenario), ""]
        lines += self._overall_lines(per_seed, censored_at)
        return "\n".join([*lines, ""])

    def _paired_lines(self, per_seed: Mapping[tuple[str, str], Mapping[int, StartResult]], scenario: str) -> list[str]:
        """The consolidated start's reduction against each other start's, paired by seed."""
        ours = {s: r for s, r in per_seed.get((scenario, "consolidated"), {}).items() if not math.isnan(r.reduction)}
        lines = []
        for other in (s for s in self.starts if s not in ("fresh", "consolidated")):
            theirs = {s: r for s, r in per_seed.get((scenario, other), {}).items() if not math.isnan(r.reduction)}
            seeds = [seed for seed in self.seeds if seed in ours and seed in theirs]
            if not seeds:
                continue
            paired = paired_difference([ours[s].reduction for s in seeds], [theirs[s].reduction for s in seeds])
            p_value = "no test" if math.isnan(paired.p_value) else f"Wilcoxon p = {paired.p_value:.3g}"
            censored = sum(ours[s].censored or theirs[s].censored for s in seeds)
            reason = paired.difference.why_not_evidence
            lines.append(
                f"- consolidated - {other}: {paired.difference.format(1, ' pp')} in reduction, paired over "
                f"{len(seeds)} seed(s), {censored} censored ({p_value}; consolidated ahead on "
                f"{100 * paired.win_rate:.0f}% of them)"
                + ("" if paired.difference.excludes_zero else ": no clear difference")
                + (f" ({reason})" if reason and paired.difference.has_bounds else "")
                + "."
            )
        return lines

    def _overall_lines(
        self, per_seed: Mapping[tuple[str, str], Mapping[int, StartResult]], censored_at: int
    ) -> list[str]:
        """Per start: its reduction averaged over the scenarios within each seed, then over seeds.

        A seed counts where every scenario's cell of it finished with a reduction; it is censored where one of them
        rests on a censored count.
        """
        lines = ["## All scenarios", ""]
        for start in (s for s in self.starts if s != "fresh"):
            averages, censored = [], 0
            for seed in self.seeds:
                found = [per_seed.get((name, start), {}).get(seed) for name in self.scenarios]
                results = [result for result in found if result is not None and not math.isnan(result.reduction)]
                if len(results) == len(self.scenarios):
                    averages.append(sum(result.reduction for result in results) / len(results))
                    censored += any(result.censored for result in results)
            if averages:
                lines.append(
                    f"- {start}: reduction in total rounds against fresh {mean_interval(averages).format(1, '%')} "
                    f"over {len(averages)} seed(s), {censored} censored at {censored_at} FedAvg rounds: the mean over "
                    f"scenarios within each seed (the paper: {PAPER_REDUCTION}%)."
                )
        return lines if len(lines) > 2 else []

    def plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``accuracy.png``: per scenario, each start's test accuracy over rounds, and the targets.

        A start's line is its mean over the seeds, with the 95% t-interval shaded; each target (dashed) is the
        mean over seeds of that seed's target.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        by_cell = self.rows_by_cell(rows)
        scenarios = [name for name in self.scenarios if any(by_cell.get((name, seed)) for seed in self.seeds)]
        columns = min(3, len(scenarios))
        lines = math.ceil(len(scenarios) / columns)
        figure = Figure(figsize=(4.6 * columns, 3.6 * lines), layout="constrained")
        FigureCanvasAgg(figure)
        for index, scenario in enumerate(scenarios):
            axes = figure.add_subplot(lines, columns, index + 1)
            curves: dict[str, dict[int, list[float]]] = {}
            targets: dict[str, list[float]] = {}
            for seed in self.seeds:
                cell = accuracy_curves(by_cell.get((scenario, seed), []))
                for start, curve in cell.items():
                    for number, accuracy in curve.items():
                        curves.setdefault(start, {}).setdefault(number, []).append(accuracy)
                for label, value in self.targets.of(cell):
                    targets.setdefault(label, []).append(value)
            for start, by_round in curves.items():
                numbers = sorted(by_round)
                intervals = [mean_interval(by_round[n]) for n in numbers]
                (line,) = axes.plot(numbers, [i.mean for i in intervals], label=start, linewidth=1.2)
                bounded = [(n, i) for n, i in zip(numbers, intervals, strict=True) if i.has_bounds]
                if bounded:
                    axes.fill_between(
                        [n for n, _ in bounded],
                        [i.low for _, i in bounded],
                        [i.high for _, i in bounded],
                        color=line.get_color(),
                        alpha=0.15,
                        linewidth=0,
                    )
            for number, values in enumerate(targets.values()):
                axes.axhline(
                    _mean(values),
                    color="gray",
                    linestyle="--",
                    linewidth=0.8,
                    label="targets: " + ", ".join(targets) if number == 0 else None,
                )
            later = [_mean(values) for by_round in curves.values() for n, values in by_round.items() if n >= 1]
            if later:  # the target region, not fresh's round 0 near chance
                axes.set_ylim(max(0.0, min(later) - 0.02), min(1.0, max(later) + 0.01))
            seeds = sum(1 for seed in self.seeds if by_cell.get((scenario, seed)))
            axes.set_title(f"{scenario} ({seeds} seed(s))", fontsize=9)
            axes.set_xlabel("FedAvg round", fontsize=8)
            axes.set_ylabel("global test accuracy", fontsize=8)
            axes.grid(alpha=0.3)
            if index == 0:
                axes.legend(fontsize=7)
        save_figure(figure, self.out / "accuracy.png")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _rounds_text(interval: Interval) -> str:
    if not interval.has_bounds:
        return f"{interval.mean:.1f} [no interval]"
    return f"{interval.mean:.1f} [{interval.low:.1f}, {interval.high:.1f}]"
