"""Experiments of several server strategies over the same scenarios and seeds, read side by side.

``kdl federate`` runs one strategy per experiment. :class:`StrategyComparison` reads the ``rounds.csv`` of several
(e.g. FedAvg's and FedDF's, with the same clients, partitions, starts and rounds) as *arms*, ``"<strategy>
<start>"``, and writes, over the cells (scenario, seed) every arm finished:

- ``summary.md``: per scenario and arm, the test accuracy after round 1 and at the end, the total rounds to the
  targets (95/98/99% of the reference arm's best: fresh FedAvg's) and the reduction against the reference, each a
  mean with its 95% t-interval over seeds; chosen pairs of arms compared seed by seed
  (:func:`~kdlightning.stats.paired_difference`);
  and the seconds a round takes, with the server's share (FedDF's distillation);
- ``accuracy.png``: per scenario, each arm's mean test accuracy by round, with its interval.

A seed's counts are :func:`~kdlightning.federated.aggregate.start_results`' (a missed target is censored at the
first round not run, and counted).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from kdlightning.atomic import write_text_atomic
from kdlightning.errors import ConfigurationError
from kdlightning.federated.aggregate import COLLECTION_ROUNDS, StartResult, Targets, accuracy_curves, start_results
from kdlightning.federated.experiment_records import ExperimentRecords
from kdlightning.stats import Interval, mean_interval, paired_difference

__all__ = ["ArmResult", "StrategyComparison"]

Rows = Sequence[Mapping[str, Any]]


class ArmResult(NamedTuple):
    """One arm in one cell: its counts to the targets, and its test accuracy after round 1 and at the end."""

    counts: StartResult
    first: float
    final: float


class StrategyComparison:
    """Several strategies' experiments over the same cells, as arms ``"<strategy> <start>"``.

    Args:
        runs: each strategy's ``rounds.csv`` rows (with ``scenario`` and ``seed``), by the strategy's name.
        rounds: the rounds each start ran (every experiment's).
        reference: the arm every reduction is against, and whose best accuracy the targets scale.
        pairs: arms compared seed by seed, ``(a, b)`` for ``a - b``.
        targets: the fractions of the reference's best counted to (default 95%, 98%, 99%).

    Raises:
        ConfigurationError: ``reference`` or an arm of ``pairs`` is none of the runs' arms.
    """

    def __init__(
        self,
        runs: Mapping[str, Rows],
        rounds: int,
        reference: str = "FedAvg fresh",
        pairs: Sequence[tuple[str, str]] = (),
        targets: Targets | None = None,
    ) -> None:
        self.rows = [{**row, "start": f"{strategy} {row['start']}"} for strategy, rows in runs.items() for row in rows]
        self.arms = list(dict.fromkeys(str(row["start"]) for row in self.rows))
        self.collections = {
            f"{strategy} {start}": COLLECTION_ROUNDS.get(start, 1)
            for strategy, rows in runs.items()
            for start in {str(row["start"]) for row in rows}
        }
        """Each arm's collection rounds: its start's (:data:`~kdlightning.federated.aggregate.COLLECTION_ROUNDS`)."""
        for arm in [reference, *(arm for pair in pairs for arm in pair)]:
            if arm not in self.arms:
                raise ConfigurationError(f"No run has the arm {arm!r}; the arms are {self.arms}.")
        self.rounds, self.reference, self.pairs = rounds, reference, list(pairs)
        self.strategies = list(runs)
        self.targets = targets if targets is not None else Targets(fractions=(0.95, 0.98, 0.99))
        cells = list(dict.fromkeys((str(row["scenario"]), int(row["seed"])) for row in self.rows))
        seeds = sorted({seed for _, seed in cells})
        self.records = self._records(Path("."), cells, seeds)
        self.cells = [cell for cell in cells if cell in self.records.finished_cells(self.rows)]
        self.scenarios = list(dict.fromkeys(name for name, _ in self.cells))
        self.seeds = sorted({seed for _, seed in self.cells})

    def per_seed(self) -> dict[tuple[str, str], dict[int, ArmResult]]:
        """Per (scenario, arm), per seed of a cell every arm finished: its counts and test accuracies."""
        by_cell = self.records.rows_by_cell(self.rows)
        values: dict[tuple[str, str], dict[int, ArmResult]] = {}
        for scenario, seed in self.cells:
            curves = accuracy_curves(by_cell[(scenario, seed)])
            named = {("fresh" if arm == self.reference else arm): curve for arm, curve in curves.items()}
            targets = [value for _, value in self.targets.of(named)]
            for arm, result in start_results(named, targets, self.collections).items():
                arm = self.reference if arm == "fresh" else arm
                curve = curves[arm]
                values.setdefault((scenario, arm), {})[seed] = ArmResult(result, curve[1], curve[self.rounds])
        return values

    def seconds(self) -> dict[str, tuple[float, float]]:
        """Per timed arm: the mean seconds of a round and, of them, the server's (over every round of every cell).

        An arm is timed where its rows say how long the server took (``server_seconds``): rows written before
        that column was recorded are left out, their rounds having been timed in another sitting.
        """
        by_cell = self.records.rows_by_cell(self.rows)
        timed = [arm for arm in self.arms if all("server_seconds" in r for r in self.rows if r["start"] == arm)]
        totals: dict[str, list[tuple[float, float]]] = {}
        for cell in self.cells:
            for arm in timed:
                rows = sorted((r for r in by_cell[cell] if r["start"] == arm), key=lambda r: int(r["round"]))
                for before, row in itertools.pairwise(rows):
                    took = float(row["seconds"]) - float(before["seconds"])
                    totals.setdefault(arm, []).append((took, float(row["server_seconds"] or 0.0)))
        return {arm: (_mean([t for t, _ in pairs]), _mean([s for _, s in pairs])) for arm, pairs in totals.items()}

    def summary(self) -> str:
        """``summary.md``: see the module."""
        per_seed = self.per_seed()
        lines = [
            f"# {' and '.join(self.strategies)}: {len(self.cells)} "
            f"cells every arm finished ({len(self.scenarios)} scenario(s) x seeds {self.seeds}), {self.rounds} rounds",
            "",
            f"Per seed, an arm's total rounds are the rounds to each target ({', '.join(self._target_names())} of "
            f"{self.reference}'s best accuracy on that seed) plus the round that collects the clients' models where "
            f"the start needs one, and its reduction is against {self.reference} on the same seed, both averaged over "
            f"the targets. A target missed within the {self.rounds} rounds counts as reached at round "
            f"{self.rounds + 1} (censored). Each figure is a mean over the seeds with its 95% t-interval.",
            "",
        ]
        for scenario in self.scenarios:
            lines += [
                f"## {scenario}",
                "",
                f"| arm | accuracy after round 1 (%) | final accuracy (%) | total rounds to target | reduction vs "
                f"{self.reference} | censored seeds |",
                "|---|---|---|---|---|---|",
            ]
            for arm in self.arms:
                values = per_seed.get((scenario, arm), {})
                first = _plain(mean_interval([100 * value.first for value in values.values()]), 2)
                final = _plain(mean_interval([100 * value.final for value in values.values()]), 2)
                rounds = _plain(mean_interval([value.counts.rounds for value in values.values()]), 1)
                reductions = [v.counts.reduction for v in values.values() if not math.isnan(v.counts.reduction)]
                reduction = "(reference)" if arm == self.reference else _or_na(reductions, 1, "%")
                censored = sum(value.counts.censored for value in values.values())
                lines.append(f"| {arm} | {first} | {final} | {rounds} | {reduction} | {censored} |")
            lines += ["", *self._paired_lines(per_seed, [scenario]), ""]
        lines += ["## All scenarios", "", *self._overall_lines(per_seed), "", *self._paired_lines(per_seed, None)]
        lines += [
            "",
            "## Seconds per round",
            "",
            "The mean over every round of every cell, for the arms whose rows time the server's share "
            "(`server_seconds`); arms timed in another sitting are left out.",
            "",
            "| arm | a round (s) | of it, the server's (s) |",
            "|---|---|---|",
        ]
        lines += [f"| {arm} | {took:.2f} | {server:.2f} |" for arm, (took, server) in self.seconds().items()]
        return "\n".join([*lines, ""])

    def write(self, out: str | Path) -> None:
        """Write ``summary.md`` and ``accuracy.png`` in ``out`` (atomically); the rows are the runs' own files."""
        out = Path(out)
        done = set(self.cells)
        write_text_atomic(out / "summary.md", self.summary())
        records = self._records(out, self.cells, self.seeds)
        records.plot([r for r in self.rows if (str(r["scenario"]), int(r["seed"])) in done])

    def _records(self, out: Path, cells: Sequence[tuple[str, int]], seeds: Sequence[int]) -> ExperimentRecords:
        """The arms' rows as an experiment's over ``cells`` (its cell grouping, finished cells and plot)."""
        strategy = " / ".join(self.strategies)
        return ExperimentRecords(out, cells, seeds, self.arms, self.rounds, self.targets, "", 0, 0, strategy=strategy)

    def _target_names(self) -> list[str]:
        return [f"{100 * f:g}%" for f in self.targets.fractions]

    def _overall_lines(self, per_seed: Mapping[tuple[str, str], Mapping[int, ArmResult]]) -> list[str]:
        """Per arm: its final accuracy and reduction, averaged over the scenarios within a seed, then over seeds."""
        lines = []
        for arm in self.arms:
            accuracy = mean_interval([100 * value for value in self._averaged(per_seed, arm, "final").values()])
            reduction = list(self._averaged(per_seed, arm, "reduction").values())
            text = f"- {arm}: final accuracy {_plain(accuracy, 2, '%')}"
            if arm != self.reference:
                text += f"; reduction in total rounds against {self.reference} {_or_na(reduction, 1, '%')}"
            lines.append(text + f", over {accuracy.n} seed(s), the mean over the scenarios within each seed.")
        return lines

    def _paired_lines(
        self,
        per_seed: Mapping[tuple[str, str], Mapping[int, ArmResult]],
        scenarios: Sequence[str] | None,
    ) -> list[str]:
        """Each pair of arms, seed by seed: in one scenario, or (None) averaged over the scenarios within a seed."""
        lines = []
        for a, b in self.pairs:
            for measure, scale, what in (("final", 100.0, "final accuracy"), ("reduction", 1.0, "reduction")):
                if scenarios is None:
                    ours, theirs = self._averaged(per_seed, a, measure), self._averaged(per_seed, b, measure)
                else:
                    ours, theirs = (
                        {s: _measure(v, measure) for s, v in per_seed.get((scenarios[0], arm), {}).items()}
                        for arm in (a, b)
                    )
                seeds = [s for s in self.seeds if s in ours and s in theirs]
                seeds = [s for s in seeds if not (math.isnan(ours[s]) or math.isnan(theirs[s]))]
                if not seeds:
                    continue
                paired = paired_difference([scale * ours[s] for s in seeds], [scale * theirs[s] for s in seeds])
                p_value = "no test" if math.isnan(paired.p_value) else f"Wilcoxon p = {paired.p_value:.3g}"
                lines.append(
                    f"- {a} - {b}: {paired.difference.format(2 if measure == 'final' else 1, ' pp')} in {what}, "
                    "paired over "
                    f"{len(seeds)} seed(s) ({p_value}; {a} ahead on {100 * paired.win_rate:.0f}% of them)"
                    + ("" if paired.difference.excludes_zero else ": no clear difference")
                    + "."
                )
        return lines

    def _averaged(
        self, per_seed: Mapping[tuple[str, str], Mapping[int, ArmResult]], arm: str, measure: str
    ) -> dict[int, float]:
        """Per seed where every scenario has ``arm``'s ``measure``: its mean over the scenarios."""
        averaged = {}
        for seed in self.seeds:
            found = [per_seed.get((scenario, arm), {}).get(seed) for scenario in self.scenarios]
            values = [_measure(value, measure) for value in found if value is not None]
            if len(values) == len(self.scenarios) and not any(math.isnan(v) for v in values):
                averaged[seed] = sum(values) / len(values)
        return averaged


def _measure(value: ArmResult, measure: str) -> float:
    return value.final if measure == "final" else value.counts.reduction


def _plain(interval: Interval, digits: int, unit: str = "") -> str:
    """``mean [low, high]`` without signs (accuracies, counts), ``unit`` after each number."""
    if not interval.has_bounds:
        return f"{interval.mean:.{digits}f}{unit} [no interval]"
    return f"{interval.mean:.{digits}f}{unit} [{interval.low:.{digits}f}{unit}, {interval.high:.{digits}f}{unit}]"


def _or_na(values: Sequence[float], digits: int, unit: str) -> str:
    return mean_interval(values).format(digits, unit) if values else "n/a"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
