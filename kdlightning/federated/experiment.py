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
  Every finished seed counts: a start that does not reach a target within the rounds run counts as reaching it
  at the first round not run (censored, :func:`~kdlightning.federated.aggregate.censored_rounds_to_target`),
  fresh as well, and the censored seeds are counted beside each figure.
- ``<out>/cells/<scenario>-seed<seed>/``: each cell's own outputs (:class:`Federation`'s).

``kdl federate`` runs a study when its config (or the command line) gives ``scenarios`` or ``seeds``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from kdlightning import pipeline
from kdlightning.atomic import save_figure, write_text_atomic
from kdlightning.data import Partitioner
from kdlightning.errors import ConfigurationError
from kdlightning.federated.aggregate import censored_rounds_to_target, round_reduction
from kdlightning.federated.federation import COLLECTION_ROUNDS, DEFAULT_CONFIG, Federation
from kdlightning.federated.records import check_record
from kdlightning.reporting import read_csv, write_csv
from kdlightning.stats import Interval, mean_interval, paired_difference

__all__ = ["PAPER_REDUCTION", "FederatedStudy", "StartResult", "cell_results", "load_study", "study_parser"]

PAPER_REDUCTION = 60.6
"""The paper's average reduction in total communication rounds of the KD-consolidated start, in percent."""


class StartResult(NamedTuple):
    """One start in one cell (``cell_results``): its total rounds and reduction, and whether a count was censored."""

    rounds: float
    """Total rounds to the targets (FedAvg rounds plus the collection round), the mean over the targets."""
    reduction: float
    """The reduction in total rounds against ``fresh``, in %, the mean over the targets; nan for ``fresh`` itself,
    without a ``fresh`` start, or where fresh meets every target at round 0."""
    censored: bool
    """Whether a target was not reached within the rounds run, by this start or by ``fresh`` (its reference), and
    counted at the first round not run."""


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
            raise ConfigurationError("`scenarios` is empty: give at least one partitioner, or None for `partitioner`.")
        if seeds is not None and not seeds:
            raise ConfigurationError("`seeds` is empty: give at least one seed, or None for `seed`.")
        self.scenarios = list(scenarios) if scenarios is not None else [federation.get("partitioner")]
        self.seeds = [int(s) for s in seeds] if seeds is not None else [int(federation.get("seed", 0))]
        self.out = Path(federation.get("out", "runs/federated"))
        self.cells: dict[tuple[str, int], Federation] = {}
        for seed in self.seeds:  # seed by seed: a study cut short has every scenario at its first seeds
            for scenario in self.scenarios:
                cell = Federation(**{**federation, "partitioner": scenario, "seed": seed})
                name = str(cell.partitioner)
                if (name, seed) in self.cells:
                    raise ConfigurationError(
                        f"Scenario {name!r} with seed {seed} is given twice (`scenarios`, `seeds`)."
                    )
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
        save_figure(figure, self.out / "accuracy.png")

    def per_seed(self, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, StartResult]]:
        """Per (scenario, start), per seed of a finished cell: its :func:`cell_results`.

        Only the finished cells of this study are read (a start cut short has not run all its rounds, so a target
        it has not reached yet is not censored). A start without a target (no ``fresh`` start) has no entry.
        """
        by_cell = self._rows_by_cell(rows)
        done = self.finished_cells(rows)
        values: dict[tuple[str, str], dict[int, StartResult]] = {}
        for (scenario, seed), federation in self.cells.items():
            if (scenario, seed) not in done:
                continue
            for start, result in cell_results(federation, by_cell.get((scenario, seed), [])).items():
                if not math.isnan(result.rounds):
                    values.setdefault((scenario, start), {})[seed] = result
        return values

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``summary.md``: per scenario and start, rounds to the target and the reduction against fresh, over seeds."""
        first = next(iter(self.cells.values()))
        starts = first.starts
        per_seed = self.per_seed(rows)
        done = self.finished_cells(rows)
        censored_at = first.rounds + 1
        lines = [
            f"# Federated across scenarios and seeds: {type(first.dataset).__name__}, {first.num_clients} clients, "
            f"FedAvg {first.rounds} rounds x {first.local_epochs} local epoch(s)",
            "",
            f"{len(done)} of {len(self.cells)} cells finished ({len(self.scenarios)} scenario(s) x seeds "
            f"{self.seeds}). Per seed, a start's total rounds are the FedAvg rounds to each target plus the round "
            "that collects the clients' models, and its reduction is against fresh FedAvg on the same seed, both "
            "averaged over the targets (as each cell's summary.md reports them). Each cell is a mean over "
            "the seeds with its 95% t-interval in brackets: the interval holds the mean a study with many more seeds "
            f"would find, 95 times in 100. The paper reports a {PAPER_REDUCTION}% reduction on average.",
            "",
            f"Every finished seed counts. A start that does not reach a target within the {first.rounds} rounds run "
            f"counts as reaching it at round {censored_at}, the first round not run (censored): it needs at least "
            "that many, so a censored start's figure is the best it could be. Fresh FedAvg, the reference, is "
            "censored the same way, which makes the reductions against it the least they could be. Beside each "
            "figure, the seeds where it rests on a censored count.",
            "",
        ]
        for scenario in dict.fromkeys(name for name, _ in self.cells):
            lines += [
                f"## {scenario}",
                "",
                "| start | total rounds to target | reduction vs fresh | finished seeds | censored seeds |",
                "|---|---|---|---|---|",
            ]
            for start in starts:
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
            lines += ["", *self._paired_lines(per_seed, scenario, starts), ""]
        lines += self._overall_lines(per_seed, starts, censored_at)
        return "\n".join([*lines, ""])

    def _paired_lines(
        self, per_seed: Mapping[tuple[str, str], Mapping[int, StartResult]], scenario: str, starts: list[str]
    ) -> list[str]:
        """The consolidated start's reduction against each other start's, paired by seed."""
        ours = {s: r for s, r in per_seed.get((scenario, "consolidated"), {}).items() if not math.isnan(r.reduction)}
        lines = []
        for other in (s for s in starts if s not in ("fresh", "consolidated")):
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
        self, per_seed: Mapping[tuple[str, str], Mapping[int, StartResult]], starts: list[str], censored_at: int
    ) -> list[str]:
        """Per start: its reduction averaged over the scenarios within each seed, then over seeds.

        A seed counts where every scenario's cell of it finished with a reduction; it is censored where one of them
        rests on a censored count.
        """
        scenarios = list(dict.fromkeys(name for name, _ in self.cells))
        lines = ["## All scenarios", ""]
        for start in (s for s in starts if s != "fresh"):
            averages, censored = [], 0
            for seed in self.seeds:
                found = [per_seed.get((name, start), {}).get(seed) for name in scenarios]
                results = [result for result in found if result is not None and not math.isnan(result.reduction)]
                if len(results) == len(scenarios):
                    averages.append(sum(result.reduction for result in results) / len(results))
                    censored += any(result.censored for result in results)
            if averages:
                lines.append(
                    f"- {start}: reduction in total rounds against fresh {mean_interval(averages).format(1, '%')} "
                    f"over {len(averages)} seed(s), {censored} censored at {censored_at} FedAvg rounds: the mean over "
                    f"scenarios within each seed (the paper: {PAPER_REDUCTION}%)."
                )
        return lines if len(lines) > 2 else []


def cell_results(federation: Federation, rows: Sequence[Mapping[str, Any]]) -> dict[str, StartResult]:
    """Per start of one finished cell: its total rounds and reduction, each the mean over the targets.

    The targets are ``federation``'s (:meth:`Federation.targets`); a start's total rounds to a target are its
    FedAvg rounds (from round 0: a start may meet it as it is) plus its collection round
    (:data:`~kdlightning.federated.federation.COLLECTION_ROUNDS`); its reduction is
    :func:`~kdlightning.federated.aggregate.round_reduction` against ``fresh``. A target not reached within the rounds
    in ``rows`` counts as reached at the first round not run, and the result is marked censored
    (:func:`~kdlightning.federated.aggregate.censored_rounds_to_target`); so is fresh's count, which censors the
    reductions against it. The rounds are nan without a target (no ``fresh`` start); the reduction is nan for
    ``fresh`` itself, without ``fresh``, or where fresh meets every target at round 0.
    """
    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        curves.setdefault(str(row["start"]), {})[int(row["round"])] = _number(row["test_acc"])
    targets = [value for _, value in federation.targets(curves)]
    fresh = curves.get("fresh")
    results = {}
    for start, curve in curves.items():
        extra = COLLECTION_ROUNDS.get(start, 1)
        totals, reductions, censored = [], [], False
        for value in targets:
            reached, missed = censored_rounds_to_target([curve[r] for r in sorted(curve)], value)
            totals.append(reached + extra)
            censored |= missed
            if fresh is not None and start != "fresh":
                baseline, fresh_missed = censored_rounds_to_target([fresh[r] for r in sorted(fresh)], value)
                reduction = round_reduction(baseline, reached, extra)
                if reduction is not None:
                    reductions.append(reduction)
                    censored |= fresh_missed
        results[start] = StartResult(_mean(totals), _mean(reductions), censored)
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
