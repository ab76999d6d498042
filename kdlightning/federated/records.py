"""What a federation writes: ``rounds.csv``, ``summary.md`` and ``accuracy.png`` (:class:`FederationRecords`).

A base class of :class:`~kdlightning.federated.Federation`: each round's row (the global model tested on the
global test set, the clients that failed), the rounds to each target accuracy and the reduction in total
communication rounds against the ``fresh`` start, the collection round counted in. A start that ran all its rounds
without reaching a target counts as reaching it at the first round not run (censored), fresh as well.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdlightning.atomic import atomic_path, save_figure, write_text_atomic
from kdlightning.data import DatasetSource, Partitioner
from kdlightning.errors import ConfigurationError
from kdlightning.federated.aggregate import censored_rounds_to_target, round_reduction
from kdlightning.federated.strategy import error_line
from kdlightning.reporting import read_csv, write_csv

__all__ = ["COLLECTION_ROUNDS", "RECORD", "STARTS", "FederationRecords", "check_record"]

RECORD = "federation.json"
"""The configuration a federation's (or an experiment's) ``rounds.csv`` was made with, in its ``out``."""

STARTS = ("fresh", "average", "consolidated", "best_client")
"""The starting points FedAvg is run from."""

COLLECTION_ROUNDS = {"fresh": 0, "average": 1, "consolidated": 1, "best_client": 1}
"""Communication rounds a start costs before FedAvg: collecting the clients' models takes one."""


class FederationRecords:
    """A federation's results: its rounds' rows, their summary and their plot (see the module)."""

    out: Path
    rounds: int
    starts: list[str]
    dataset: DatasetSource
    num_clients: int
    partitioner: Partitioner
    local_epochs: int
    seed: int
    target_accuracy: float | None
    target_fractions: list[float]
    evaluate: Callable[[dict[str, Tensor]], tuple[float, float]]

    def finished_starts(self) -> dict[str, list[dict[str, str]]]:
        """Rows of ``rounds.csv`` per start that ran all its rounds (a start cut short is run again)."""
        rows = read_csv(self.out / "rounds.csv")
        by_start: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            by_start.setdefault(row["start"], []).append(row)
        return {
            start: group
            for start, group in by_start.items()
            if {int(r["round"]) for r in group} >= set(range(self.rounds + 1))
        }

    def configuration(self) -> dict[str, Any]:
        """What the rows of ``rounds.csv`` depend on, as JSON: a resumed federation must have the same.

        The data, partition and splits, the networks, the pre-training and consolidation, the local training and
        the strategy; not ``rounds`` (more rounds extend the starts), the targets (read from the rows), ``starts``,
        the output, progress or logger.
        """
        settings = {
            "dataset": [type(self.dataset).__qualname__, vars(self.dataset)],
            "networks": self._network_texts(),
            **{
                name: getattr(self, name)
                for name in (
                    "partitioner",
                    "num_clients",
                    "public_fraction",
                    "val_fraction",
                    "batch_size",
                    "seed",
                    "pretrain_epochs",
                    "consolidation_epochs",
                    "consolidation",
                    "weight_by_size",
                    "local_epochs",
                    "fraction_train",
                    "strategy",
                    "trainer",
                )
            },
        }
        text = json.dumps(settings, sort_keys=True, default=str)
        return json.loads(re.sub(r" at 0x[0-9a-fA-F]+", "", text))  # a function's address is not its meaning

    def check_resume(self) -> None:
        """Refuse to keep finished starts of another configuration (:func:`check_record`); record this one."""
        check_record(self.out, self.configuration(), has_rows=bool(self.finished_starts()))

    def _network_texts(self) -> list[str]:
        """The global network's and each client architecture's ``repr``."""
        with torch.random.fork_rng():  # building them draws initial weights
            networks = [self.global_network()]  # type: ignore[attr-defined]
            networks += [self.client_network(k) for k in range(self._architectures())]  # type: ignore[attr-defined]
        return [repr(network) for network in networks]

    def finished_rows(self) -> list[dict[str, Any]] | None:
        """The rows of ``rounds.csv`` when every start ran all its rounds (and the tables are rewritten), else None."""
        finished = self.finished_starts()
        if not all(start in finished for start in self.starts):
            return None
        rows: list[dict[str, Any]] = [row for start in self.starts for row in finished[start]]
        self.record(rows)
        self.plot(rows)
        return rows

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rounds.csv`` and ``summary.md`` atomically."""
        write_csv(self.out / "rounds.csv", rows)
        write_text_atomic(self.out / "summary.md", self.summary(rows))

    def record_round(
        self,
        rows: list[dict[str, Any]],
        start: str,
        server_round: int,
        state: dict[str, Tensor],
        began: float,
        failures: Sequence[str] = (),
    ) -> float:
        """Test round ``server_round``'s global ``state`` of ``start``, add its row to ``rows``, record them all.

        Args:
            rows: the rows so far; the new one is appended.
            start: the start FedAvg runs from.
            server_round: the FedAvg round (0: the start itself).
            state: the global model after that round.
            began: ``time.perf_counter()`` when this start's FedAvg began.
            failures: the errors of the round's clients that failed (the row's ``failures``, their count, and
                ``failure``, the line of the first one's error that names the exception: ``error_line``).

        Returns:
            The test accuracy.
        """
        accuracy, loss = self.evaluate(state)
        rows.append(
            {
                "start": start,
                "round": server_round,
                "test_acc": accuracy,
                "test_loss": loss,
                "seconds": round(time.perf_counter() - began, 2),
                "failures": len(failures),
                "failure": error_line(failures[0]) if failures else "",
            }
        )
        self.record(rows)
        return accuracy

    def save_model(self, start: str, state: dict[str, Tensor]) -> None:
        """Write ``start``'s final global model to ``models/<start>.pt`` (atomically)."""
        with atomic_path(self.out / "models" / f"{start}.pt") as tmp:
            torch.save(state, tmp)

    def targets(self, curves: dict[str, dict[int, float]]) -> list[tuple[str, float]]:
        """``(label, accuracy)`` of each target: ``target_accuracy``, or the fractions of the fresh start's best."""
        if self.target_accuracy is not None:
            return [("target", self.target_accuracy)]
        fresh = [acc for r, acc in curves.get("fresh", {}).items() if r >= 1]
        if not fresh:
            return []
        return [(f"{100 * f:g}% of fresh's best", f * max(fresh)) for f in self.target_fractions]

    def summary(self, rows: Sequence[dict[str, Any]]) -> str:
        """``summary.md``: per start and target, the total rounds to reach it and the reduction against ``fresh``."""
        curves: dict[str, dict[int, float]] = {}
        for row in rows:
            curves.setdefault(str(row["start"]), {})[int(row["round"])] = float(row["test_acc"])
        lines = [
            f"# Federated: {type(self.dataset).__name__}, {self.num_clients} clients ({self.partitioner}), "
            f"FedAvg {self.rounds} rounds x {self.local_epochs} local epoch(s), seed {self.seed}",
            "",
        ]
        targets = self.targets(curves)
        if not targets:
            return "\n".join([*lines, "No target accuracy yet (the fresh start has not run).", ""])
        lines += [
            "Total communication rounds to reach each target test accuracy: FedAvg rounds plus the round that",
            "collects the clients' models (average, consolidated), and in brackets the reduction against fresh.",
            "",
            "| start | accuracy at round 0 | final accuracy | "
            + " | ".join(f"{label} ({value:.4f})" for label, value in targets)
            + " |",
            "|---|---|---|" + "---|" * len(targets),
        ]
        reductions: dict[str, list[float]] = {}
        censored: dict[str, int] = {}
        fresh_curve = curves.get("fresh", {})
        fresh_accuracies = [fresh_curve[r] for r in sorted(fresh_curve)]
        for start, curve in curves.items():
            accuracies = [curve[r] for r in sorted(curve)]  # from round 0: a start may meet the target as it is
            cells = [f"{curve.get(0, math.nan):.4f}", f"{curve[max(curve)]:.4f}"]
            extra = COLLECTION_ROUNDS[start]
            for _, value in targets:
                reached, missed = censored_rounds_to_target(accuracies, value)
                cell = f"> {self.rounds + extra}" if missed else str(reached + extra)
                baseline, fresh_missed = censored_rounds_to_target(fresh_accuracies, value)
                running = (missed and len(accuracies) <= self.rounds) or (
                    fresh_missed and len(fresh_accuracies) <= self.rounds
                )  # a start still running has not missed the target yet
                if start == "fresh" or not fresh_accuracies or running:
                    cells.append(cell)
                    continue
                reduction = round_reduction(baseline, reached, extra)
                if reduction is not None:
                    cell += f" ({reduction:+.1f}%)"
                    reductions.setdefault(start, []).append(reduction)
                    censored[start] = censored.get(start, 0) + (missed or fresh_missed)
                cells.append(cell)
            lines.append(f"| {start} | " + " | ".join(cells) + " |")
        lines.append("")
        if any(censored.values()):
            lines += [
                f"`> N`: the target was not reached within the {self.rounds} rounds run. Its reduction counts it as "
                f"reached at round {self.rounds + 1}, the first round not run (censored): the most the reduction "
                "could be (for fresh, the least).",
                "",
            ]
        for start, values in reductions.items():
            count = censored.get(start, 0)
            lines.append(
                f"{start}: reduction in total rounds against fresh {sum(values) / len(values):+.1f}%, the mean over "
                f"{len(values)} target(s)" + (f", {count} of them censored" if count else "") + " (the study reports "
                "60.6% on average)."
            )
        return "\n".join([*lines, ""])

    def plot(self, rows: Sequence[dict[str, Any]]) -> None:
        """``accuracy.png``: test accuracy over rounds, one line per start, the target accuracies dashed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for start in dict.fromkeys(str(r["start"]) for r in rows):
            points = sorted((int(r["round"]), float(r["test_acc"])) for r in rows if r["start"] == start)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=start)
        curves: dict[str, dict[int, float]] = {}
        for row in rows:
            curves.setdefault(str(row["start"]), {})[int(row["round"])] = float(row["test_acc"])
        targets = self.targets(curves)  # what rounds-to-target counts to; their values are in summary.md
        for index, (_, value) in enumerate(targets):
            label = "targets: " + ", ".join(label for label, _ in targets) if index == 0 else None
            axes.axhline(value, color="gray", linestyle="--", linewidth=0.8, label=label)
        axes.set_xlabel("FedAvg round")
        axes.set_ylabel("global test accuracy")
        axes.set_title(
            f"{type(self.dataset).__name__}, {self.num_clients} clients ({self.partitioner}), seed {self.seed}",
            fontsize=10,
        )
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        save_figure(figure, self.out / "accuracy.png")


def check_record(out: Path, configuration: dict[str, Any], has_rows: bool) -> None:
    """Refuse to resume rows of ``out`` made with another configuration; record ``configuration`` there.

    Args:
        out: the folder of ``rounds.csv`` and :data:`RECORD`.
        configuration: what the rows depend on (:meth:`FederationRecords.configuration`).
        has_rows: whether ``out`` holds rows this run would keep.

    Raises:
        ValueError: naming every setting that differs, before any client trains.
    """
    path = out / RECORD
    if has_rows and path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        differences = [
            f"  `{key}`: {json.dumps(recorded.get(key))} in {path}, {json.dumps(configuration.get(key))} now"
            for key in sorted(set(recorded) | set(configuration))
            if recorded.get(key) != configuration.get(key)
        ]
        if differences:
            raise ConfigurationError(
                f"{out} holds rounds of another configuration: resuming would mix both in rounds.csv and "
                "summary.md.\n" + "\n".join(differences) + "\nPass another `--out`, or the recorded values to resume."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(configuration, indent=2, sort_keys=True) + "\n")
