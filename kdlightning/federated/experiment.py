"""The federated experiment across scenarios and seeds: one :class:`~kdlightning.federated.Federation` per cell.

A :class:`FederatedStudy` runs the same federation (network, clients, rounds, starts) under several partition
scenarios (IID, Dirichlet 1.0 / 0.5 / 0.1, label skew, ...) and seeds, each ``(scenario, seed)`` a cell with its
own directory, and reports how many communication rounds each start saves against fresh FedAvg with its 95%
interval over seeds (:mod:`kdlightning.stats`): a reduction read from one seed may be noise.

- ``<out>/rounds.csv``: every cell's rows (start, round, test accuracy, ...) with a ``scenario`` and a ``seed``
  column, written atomically after each cell. A cell whose rows cover every start and round is not run again.
- ``<out>/summary.md``: per scenario and start, the total rounds to the target and the reduction in total
  rounds against ``fresh`` (the collection round counted in), each a mean with its t-interval over seeds;
  the consolidated start against each other start as a difference paired by seed; beside the paper's 60.6%.
- ``<out>/cells/<scenario>-seed<seed>/``: each cell's own outputs (:class:`Federation`'s).

``kdl federate`` runs a study when its config (or the command line) gives ``scenarios`` or ``seeds``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning import pipeline
from kdlightning.atomic import atomic_path, write_text_atomic
from kdlightning.data import Partitioner
from kdlightning.federated.aggregate import round_reduction, rounds_to_target
from kdlightning.federated.federation import COLLECTION_ROUNDS, DEFAULT_CONFIG, Federation
from kdlightning.federated.records import check_record
from kdlightning.reporting import read_csv, write_csv
from kdlightning.stats import Interval, mean_interval, paired_difference

__all__ = ["PAPER_REDUCTION", "FederatedStudy", "cell_results", "load_study", "study_parser"]

PAPER_REDUCTION = 60.6
"""The paper's average reduction in total communication rounds of the KD-consolidated start, in percent."""


class FederatedStudy:
    """Run a :class:`Federation` per (scenario, seed) and report the reduction in rounds with its 95% interval.

    Args:
        scenarios: partitioners, one scenario each (their names must differ); None for the federation's
            ``partitioner`` alone.
        seeds: seeds, one repetition of every scenario each; None for the federation's ``seed`` alone.
        **federation: the arguments of every cell's :class:`Federation` (``network``, ``rounds``, ``starts``,
            ``out``, ...). A cell's ``partitioner`` and ``seed`` are its scenario and seed, its ``out`` is
            ``<out>/cells/<scenario>-seed<seed>``.

    Every cell is built here, so an impossible scenario or a bad value fails before any client trains.

    Examples:
        ``FederatedStudy(network=MLP, scenarios=[IIDPartitioner(), DirichletPartitioner(0.1)], seeds=[0, 1],
        rounds=20, out="runs/federated/study").run()``.
    """

    def __init__(
        self, scenarios: Sequence[Partitioner] | None = None, seeds: Sequence[int] | None = None, **federation: Any
    ) -> None:
        if scenarios is not None and not scenarios:
            raise ValueError("`scenarios` is empty: give at least one partitioner, or None for `partitioner`.")
        if seeds is not None and not seeds:
            raise ValueError("`seeds` is empty: give at least one seed, or None for `seed`.")
        self.scenarios = list(scenarios) if scenarios is not None else [federation.get("partitioner")]
        self.seeds = [int(s) for s in seeds] if seeds is not None else [int(federation.get("seed", 0))]
        self.out = Path(federation.get("out", "runs/federated"))
        self.cells: dict[tuple[str, int], Federation] = {}
        for seed in self.seeds:  # seed by seed: a study cut short has every scenario at its first seeds
            for scenario in self.scenarios:
                cell = Federation(**{**federation, "partitioner": scenario, "seed": seed})
                name = str(cell.partitioner)
                if (name, seed) in self.cells:
                    raise ValueError(f"Scenario {name!r} with seed {seed} is given twice (`scenarios`, `seeds`).")
                cell.out = self.out / "cells" / f"{_slug(name)}-seed{seed}"  # written to only when it runs
                if cell.logger is not False:  # W&B: every cell's runs in the experiment's group
                    cell.logger = {"group": self.out.name, **(cell.logger if isinstance(cell.logger, dict) else {})}
                self.cells[(name, seed)] = cell

    def finished_cells(self, rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, int]]:
        """The cells whose rows in ``rows`` cover every start and every round (0 .. ``rounds``)."""
        found: dict[tuple[str, int], set[tuple[str, int]]] = {}
        for row in rows:
            found.setdefault((str(row["scenario"]), int(row["seed"])), set()).add(
                (str(row["start"]), int(row["round"]))
            )
        return {
            key
            for key, federation in self.cells.items()
            if found.get(key, set()) >= {(s, r) for s in federation.starts for r in range(federation.rounds + 1)}
        }

    def run(self, verbose: bool = False) -> list[dict[str, Any]]:
        """Run (or resume) every cell in Flower's simulation; return the rows of ``rounds.csv``.

        A cell already in ``rounds.csv`` with every start and round is not run again; one cut short resumes
        (its finished starts are kept, see :func:`~kdlightning.federated.apps.run`).
        """
        from kdlightning.federated.apps import run

        by_cell = self._rows_by_cell(read_csv(self.out / "rounds.csv"))
        finished = self.finished_cells([row for rows in by_cell.values() for row in rows])
        check_record(self.out, self.configuration(), has_rows=bool(finished))
        for key, federation in self.cells.items():
            if key in finished:
                continue
            scenario, seed = key
            by_cell[key] = [{"scenario": scenario, "seed": seed, **row} for row in run(federation, verbose=verbose)]
            self.record([row for rows in by_cell.values() for row in rows])
        rows = [row for key in self.cells for row in by_cell.get(key, [])]
        self.record(rows)
        return rows

    def configuration(self) -> dict[str, Any]:
        """What every cell's rows depend on beside its scenario and seed (:meth:`Federation.configuration`)."""
        first = next(iter(self.cells.values()))
        return {k: v for k, v in first.configuration().items() if k not in ("partitioner", "seed")}

    def _rows_by_cell(self, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """``rows`` grouped by cell, in the order of :attr:`cells` (rows of other cells are kept after them)."""
        grouped: dict[tuple[str, int], list[dict[str, Any]]] = {key: [] for key in self.cells}
        for row in rows:
            grouped.setdefault((str(row["scenario"]), int(row["seed"])), []).append(dict(row))
        return {key: value for key, value in grouped.items() if value}

    def record(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rounds.csv``, ``summary.md`` and ``accuracy.png`` atomically."""
        write_csv(self.out / "rounds.csv", rows)
        write_text_atomic(self.out / "summary.md", self.summary(rows))
        if rows:
            self.plot(rows)

    def plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``accuracy.png``: per scenario, each start's test accuracy over rounds, and the targets.

        A start's line is its mean over the seeds, with the 95% t-interval shaded; each target (dashed) is the
        mean over seeds of that seed's target.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        by_cell = self._rows_by_cell(rows)
        scenarios = [
            name
            for name in dict.fromkeys(name for name, _ in self.cells)
            if any(by_cell.get((name, seed)) for seed in self.seeds)
        ]
        columns = min(3, len(scenarios))
        lines = math.ceil(len(scenarios) / columns)
        figure = Figure(figsize=(4.6 * columns, 3.6 * lines), layout="constrained")
        FigureCanvasAgg(figure)
        for index, scenario in enumerate(scenarios):
            axes = figure.add_subplot(lines, columns, index + 1)
            curves: dict[str, dict[int, list[float]]] = {}
            targets: dict[str, list[float]] = {}
            for seed in self.seeds:
                cell_rows = by_cell.get((scenario, seed), [])
                cell: dict[str, dict[int, float]] = {}
                for row in cell_rows:
                    cell.setdefault(str(row["start"]), {})[int(row["round"])] = _number(row["test_acc"])
                for start, curve in cell.items():
                    for number, accuracy in curve.items():
                        curves.setdefault(start, {}).setdefault(number, []).append(accuracy)
                for label, value in self.cells[(scenario, seed)].targets(cell):
                    targets.setdefault(label, []).append(value)
            for start, curve in curves.items():
                numbers = sorted(curve)
                intervals = [mean_interval(curve[n]) for n in numbers]
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
            later = [_mean(values) for curve in curves.values() for n, values in curve.items() if n >= 1]
            if later:  # the target region, not fresh's round 0 near chance
                axes.set_ylim(max(0.0, min(later) - 0.02), min(1.0, max(later) + 0.01))
            seeds = sum(1 for seed in self.seeds if by_cell.get((scenario, seed)))
            axes.set_title(f"{scenario} ({seeds} seed(s))", fontsize=9)
            axes.set_xlabel("FedAvg round", fontsize=8)
            axes.set_ylabel("global test accuracy", fontsize=8)
            axes.grid(alpha=0.3)
            if index == 0:
                axes.legend(fontsize=7)
        with atomic_path(self.out / "accuracy.png") as tmp:
            figure.savefig(tmp, format="png", dpi=100)

    def per_seed(self, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, tuple[float, float]]]:
        """Per (scenario, start), per seed: ``(total rounds, reduction in %)`` of :func:`cell_results` (nan: none).

        Only the cells of this study are read; a start that reached no target has no entry for that seed.
        """
        by_cell = self._rows_by_cell(rows)
        values: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
        for (scenario, seed), federation in self.cells.items():
            for start, result in cell_results(federation, by_cell.get((scenario, seed), [])).items():
                if not math.isnan(result[0]):
                    values.setdefault((scenario, start), {})[seed] = result
        return values

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``summary.md``: per scenario and start, rounds to the target and the reduction against fresh, over seeds."""
        first = next(iter(self.cells.values()))
        starts = first.starts
        per_seed = self.per_seed(rows)
        done = self.finished_cells(rows)
        lines = [
            f"# Federated across scenarios and seeds: {type(first.dataset).__name__}, {first.num_clients} clients, "
            f"FedAvg {first.rounds} rounds x {first.local_epochs} local epoch(s)",
            "",
            f"{len(done)} of {len(self.cells)} cells finished ({len(self.scenarios)} scenario(s) x seeds "
            f"{self.seeds}). Per seed, a start's total rounds are the FedAvg rounds to each target plus the round "
            "that collects the clients' models, and its reduction is against fresh FedAvg on the same seed, both "
            "averaged over the targets it reached (as each cell's summary.md reports them). Each cell is a mean over "
            "the seeds with its 95% t-interval in brackets: the interval holds the mean a study with many more seeds "
            f"would find, 95 times in 100. The paper reports a {PAPER_REDUCTION}% reduction on average.",
            "",
        ]
        for scenario in dict.fromkeys(name for name, _ in self.cells):
            lines += [
                f"## {scenario}",
                "",
                "| start | total rounds to target | reduction vs fresh | finished seeds that reached a target |",
                "|---|---|---|---|",
            ]
            for start in starts:
                values = per_seed.get((scenario, start), {})
                rounds = [total for total, _ in values.values()]
                reductions = [reduction for _, reduction in values.values() if not math.isnan(reduction)]
                rounds_cell = _rounds_text(mean_interval(rounds)) if rounds else "none reached"
                if start == "fresh":
                    reduction_cell = "(reference)"
                else:
                    reduction_cell = mean_interval(reductions).format(1, "%") if reductions else "n/a"
                ran = sum(1 for seed in self.seeds if (scenario, seed) in done)
                lines.append(f"| {start} | {rounds_cell} | {reduction_cell} | {len(values)} of {ran} |")
            lines += ["", *self._paired_lines(per_seed, scenario, starts), ""]
        lines += self._overall_lines(per_seed, starts)
        return "\n".join([*lines, ""])

    def _paired_lines(
        self, per_seed: Mapping[tuple[str, str], Mapping[int, tuple[float, float]]], scenario: str, starts: list[str]
    ) -> list[str]:
        """The consolidated start's reduction against each other start's, paired by seed."""
        ours = {seed: r for seed, (_, r) in per_seed.get((scenario, "consolidated"), {}).items() if not math.isnan(r)}
        lines = []
        for other in (s for s in starts if s not in ("fresh", "consolidated")):
            theirs = {seed: r for seed, (_, r) in per_seed.get((scenario, other), {}).items() if not math.isnan(r)}
            seeds = [seed for seed in self.seeds if seed in ours and seed in theirs]
            if not seeds:
                continue
            paired = paired_difference([ours[s] for s in seeds], [theirs[s] for s in seeds])
            p_value = "no test" if math.isnan(paired.p_value) else f"Wilcoxon p = {paired.p_value:.3g}"
            lines.append(
                f"- consolidated - {other}: {paired.difference.format(1, ' pp')} in reduction, paired over "
                f"{len(seeds)} seed(s) ({p_value}; consolidated ahead on {100 * paired.win_rate:.0f}% of them)"
                + ("" if paired.difference.excludes_zero else ": no clear difference")
                + "."
            )
        return lines

    def _overall_lines(
        self, per_seed: Mapping[tuple[str, str], Mapping[int, tuple[float, float]]], starts: list[str]
    ) -> list[str]:
        """Per start: its reduction averaged over the scenarios within each seed, then over seeds."""
        scenarios = list(dict.fromkeys(name for name, _ in self.cells))
        lines = ["## All scenarios", ""]
        for start in (s for s in starts if s != "fresh"):
            averages = []
            for seed in self.seeds:
                found = [per_seed.get((name, start), {}).get(seed, (math.nan, math.nan))[1] for name in scenarios]
                if not any(math.isnan(value) for value in found):
                    averages.append(sum(found) / len(found))
            if averages:
                lines.append(
                    f"- {start}: reduction in total rounds against fresh {mean_interval(averages).format(1, '%')}, "
                    f"the mean over scenarios within each of {len(averages)} seed(s) (the paper: {PAPER_REDUCTION}%)."
                )
        return lines if len(lines) > 2 else []


def cell_results(federation: Federation, rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per start of one cell: ``(total rounds, reduction in %)``, each the mean over the targets the start reached.

    The targets are ``federation``'s (:meth:`Federation.targets`); a start's total rounds to a target are its
    FedAvg rounds (from round 0: a start may meet it as it is) plus its collection round
    (:data:`~kdlightning.federated.federation.COLLECTION_ROUNDS`); its reduction is
    :func:`~kdlightning.federated.aggregate.round_reduction` against ``fresh``. nan where no target was reached (the
    reduction also where there is no ``fresh``, and for ``fresh`` itself).
    """
    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        curves.setdefault(str(row["start"]), {})[int(row["round"])] = _number(row["test_acc"])
    targets = [value for _, value in federation.targets(curves)]
    fresh = curves.get("fresh")
    results = {}
    for start, curve in curves.items():
        extra = COLLECTION_ROUNDS.get(start, 1)
        totals, reductions = [], []
        for value in targets:
            reached = rounds_to_target([curve[r] for r in sorted(curve)], value)
            if reached is None:
                continue
            totals.append(reached + extra)
            if fresh is not None and start != "fresh":
                baseline = rounds_to_target([fresh[r] for r in sorted(fresh)], value)
                reduction = round_reduction(baseline, reached, extra)
                if reduction is not None:
                    reductions.append(reduction)
        results[start] = (_mean(totals), _mean(reductions))
    return results


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _rounds_text(interval: Interval) -> str:
    if not interval.has_bounds:
        return f"{interval.mean:.1f} [no interval]"
    return f"{interval.mean:.1f} [{interval.low:.1f}, {interval.high:.1f}]"


def _slug(name: str) -> str:
    """A directory name for a scenario: ``dirichlet(alpha=0.5)`` -> ``dirichlet_alpha_0.5``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_") or "scenario"


def study_parser(args: Sequence[str] = (), **kwargs: Any) -> Any:
    """``kdl federate``'s parser: :class:`Federation`'s arguments, plus ``scenarios`` and ``seeds`` lists.

    Args:
        args: the arguments it will parse (an explicit ``-c`` replaces the embedded default config).
        **kwargs: more ``ArgumentParser`` options (e.g. ``formatter_class``).
    """
    parser = pipeline.command_parser(Federation, "kdl federate", DEFAULT_CONFIG, args, **kwargs)
    parser.add_argument(
        "--scenarios",
        type=list[Partitioner] | None,
        default=None,
        help="partitioners to run the federation under, one scenario each (a study across scenarios and seeds)",
    )
    parser.add_argument(
        "--seeds", type=list[int] | None, default=None, help="seeds to repeat every scenario with (a study)"
    )
    return parser


def load_study(args: Sequence[str]) -> FederatedStudy:
    """The :class:`FederatedStudy` of ``kdl federate``'s arguments (``-c CONFIG``, ``--out DIR``, overrides).

    Without ``scenarios`` and ``seeds`` it has one cell, the config's federation.

    Examples:
        ``load_study(["-c", "configs/federated/fashion_mnist_scenarios.yaml", "--rounds=10"]).run()``.
    """
    given = [str(arg) for arg in args]
    parser = study_parser(given)
    init = parser.instantiate(parser.parse_args(given)).as_dict()
    init.pop("config", None)
    return FederatedStudy(**init)
