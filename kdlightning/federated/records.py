"""What a federation writes in its ``out``: ``rounds.csv``, ``summary.md``, ``accuracy.png``, ``federation.json``.

:class:`FederationRecords` writes each round's row (the global model's test accuracy and loss, the clients that
failed), the summary (the rounds to each target accuracy and the reduction in total communication rounds against
the ``fresh`` start, the collection round counted in: :func:`~kdlightning.federated.aggregate.count_to_target`),
the plot and the final models, and reads back the starts a previous run finished. :func:`federation_record` is
what the rows depend on, and :func:`check_record` refuses to resume rows made with another one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdlightning.atomic import atomic_path, save_figure, write_text_atomic
from kdlightning.errors import ConfigurationError
from kdlightning.federated.aggregate import PAPER_REDUCTION, Targets, accuracy_curves, count_to_target
from kdlightning.federated.config import FederationConfig
from kdlightning.federated.strategy import failure_reason
from kdlightning.pipeline import describe, differences, show, without_addresses
from kdlightning.reporting import read_csv, write_csv

__all__ = ["RECORD", "FederationRecords", "check_record", "federation_record"]

RECORD = "federation.json"
"""The configuration a federation's (or an experiment's) ``rounds.csv`` was made with, in its ``out``."""


class FederationRecords:
    """A federation's results in ``out``: its rounds' rows, their summary, their plot and the final models.

    Args:
        out: the federation's output directory.
        starts: the starts that run, in order.
        rounds: FedAvg rounds run from each start.
        targets: what the rounds are counted to.
        dataset: the data set's name, in the summary's heading and the plot's title.
        num_clients: number of clients, likewise.
        partitioner: the partition's name, likewise.
        local_epochs: epochs each client trains per round, in the heading.
        seed: the federation's seed, likewise.
        strategy: the server strategy's name, likewise.
    """

    def __init__(
        self,
        out: Path,
        starts: Sequence[str],
        rounds: int,
        targets: Targets,
        dataset: str,
        num_clients: int,
        partitioner: str,
        local_epochs: int,
        seed: int,
        strategy: str = "FedAvg",
    ) -> None:
        self.out, self.starts, self.rounds, self.targets = out, list(starts), rounds, targets
        self.dataset, self.num_clients, self.partitioner = dataset, num_clients, partitioner
        self.local_epochs, self.seed, self.strategy = local_epochs, seed, strategy

    def finished_starts(self) -> dict[str, list[dict[str, str]]]:
        """Rows of ``rounds.csv`` per start that ran all its rounds (a start cut short is run again)."""
        by_start: dict[str, list[dict[str, str]]] = {}
        for row in read_csv(self.out / "rounds.csv"):
            by_start.setdefault(row["start"], []).append(row)
        return {
            start: group
            for start, group in by_start.items()
            if {int(r["round"]) for r in group} >= set(range(self.rounds + 1))
        }

    def finished_rows(self) -> list[dict[str, Any]] | None:
        """The rows of ``rounds.csv`` when every start ran all its rounds (and the tables are rewritten), else None."""
        finished = self.finished_starts()
        if not all(start in finished for start in self.starts):
            return None
        rows: list[dict[str, Any]] = [row for start in self.starts for row in finished[start]]
        self.record(rows)
        self.plot(rows)
        return rows

    def check_resume(self, configuration: Mapping[str, Any]) -> None:
        """Refuse to keep finished starts of another ``configuration`` (:func:`check_record`); record this one."""
        check_record(self.out, configuration, has_rows=bool(self.finished_starts()))

    def record(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rounds.csv`` and ``summary.md`` atomically."""
        write_csv(self.out / "rounds.csv", rows)
        write_text_atomic(self.out / "summary.md", self.summary(rows))

    def record_round(
        self,
        rows: list[dict[str, Any]],
        start: str,
        server_round: int,
        accuracy: float,
        loss: float,
        seconds: float,
        failures: Sequence[str] = (),
        server_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """Add the row of round ``server_round`` of ``start`` to ``rows`` and record them all; return the row.

        Args:
            rows: the rows so far; the new one is appended.
            start: the start FedAvg runs from.
            server_round: the FedAvg round (0: the start itself).
            accuracy: the global model's test accuracy after that round.
            loss: its test loss.
            seconds: the time since this start's FedAvg began.
            failures: the errors of the round's clients that failed (the row's ``failures``, their count, and
                ``failure``, the line of the first one's error that names the exception: :func:`failure_reason`).
            server_seconds: of ``seconds``, those the server spent on the round's model beyond aggregating it
                (FedDF's distillation; 0 for FedAvg).
        """
        row = {
            "start": start,
            "round": server_round,
            "test_acc": accuracy,
            "test_loss": loss,
            "seconds": round(seconds, 2),
            "failures": len(failures),
            "failure": failure_reason(failures[0]) if failures else "",
            "server_seconds": round(server_seconds, 2),
        }
        rows.append(row)
        self.record(rows)
        return row

    def save_model(self, start: str, state: dict[str, Tensor]) -> None:
        """Write ``start``'s final global model to ``models/<start>.pt`` (atomically)."""
        with atomic_path(self.out / "models" / f"{start}.pt") as tmp:
            torch.save(state, tmp)

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``summary.md``: per start and target, the total rounds to reach it and the reduction against ``fresh``."""
        curves = accuracy_curves(rows)
        lines = [
            f"# Federated: {self.dataset}, {self.num_clients} clients ({self.partitioner}), "
            f"{self.strategy} {self.rounds} rounds x {self.local_epochs} local epoch(s), seed {self.seed}",
            "",
        ]
        targets = self.targets.of(curves)
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
        fresh = curves.get("fresh", {})
        for start, curve in curves.items():
            cells = [f"{curve.get(0, math.nan):.4f}", f"{curve[max(curve)]:.4f}"]
            for _, value in targets:
                count = count_to_target(curves, start, value)
                cell = f"> {self.rounds + count.collection}" if count.censored else str(count.total)
                running = (count.censored and len(curve) <= self.rounds) or (
                    count.fresh_censored and len(fresh) <= self.rounds
                )  # a start still running has not missed the target yet
                if start == "fresh" or not fresh or running or count.reduction is None:
                    cells.append(cell)
                    continue
                cells.append(f"{cell} ({count.reduction:+.1f}%)")
                reductions.setdefault(start, []).append(count.reduction)
                censored[start] = censored.get(start, 0) + (count.censored or count.fresh_censored)
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
            missed = censored.get(start, 0)
            lines.append(
                f"{start}: reduction in total rounds against fresh {sum(values) / len(values):+.1f}%, the mean over "
                f"{len(values)} target(s)" + (f", {missed} of them censored" if missed else "") + " (the study reports "
                f"{PAPER_REDUCTION}% on average)."
            )
        return "\n".join([*lines, ""])

    def plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``accuracy.png``: test accuracy over rounds, one line per start, the target accuracies dashed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        curves = accuracy_curves(rows)
        for start, curve in curves.items():
            numbers = sorted(curve)
            axes.plot(numbers, [curve[n] for n in numbers], marker="o", markersize=3, label=start)
        targets = self.targets.of(curves)  # what rounds-to-target counts to; their values are in summary.md
        for index, (_, value) in enumerate(targets):
            label = "targets: " + ", ".join(label for label, _ in targets) if index == 0 else None
            axes.axhline(value, color="gray", linestyle="--", linewidth=0.8, label=label)
        axes.set_xlabel("FedAvg round")
        axes.set_ylabel("global test accuracy")
        title = f"{self.dataset}, {self.num_clients} clients ({self.partitioner}), seed {self.seed}"
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        save_figure(figure, self.out / "accuracy.png")


def federation_record(config: FederationConfig, networks: Sequence[str]) -> dict[str, Any]:
    """What the rows of a federation's ``rounds.csv`` depend on, as JSON (``federation.json``).

    The data, partition and splits, the networks (``networks``: their ``repr``), the pre-training and consolidation,
    the local training, the strategy and (on text) the tokenizers; not ``rounds`` (more rounds extend the starts),
    the targets (read from the rows), ``starts``, the output, progress or logger. A value JSON does not hold is
    written as its ``str``, without memory addresses (:func:`~kdlightning.pipeline.without_addresses`).
    """
    settings = {
        "dataset": [type(config.dataset).__qualname__, vars(config.dataset)],
        "networks": list(networks),
        "partitioner": config.partitioner,
        "num_clients": config.num_clients,
        "public_fraction": config.public_fraction,
        "val_fraction": config.val_fraction,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "pretrain_epochs": config.pretrain_epochs,
        "consolidation_epochs": config.consolidation_epochs,
        "consolidation": config.consolidation,
        "weight_by_size": config.weight_by_size,
        "local_epochs": config.local_epochs,
        "fraction_train": config.fraction_train,
        "strategy": config.strategy,
        "trainer": config.trainer,
    }
    if (tokens := config.tokenization.fingerprint()) is not None:  # the tokenizers and max_length
        settings["tokenizers"] = tokens
    if config.optimizer is not None:
        settings["optimizer"] = describe(config.optimizer)
    record: dict[str, Any] = json.loads(without_addresses(json.dumps(settings, sort_keys=True, default=str)))
    return record


def check_record(out: Path, configuration: Mapping[str, Any], has_rows: bool) -> None:
    """Refuse to resume rows of ``out`` made with another configuration; record ``configuration`` there.

    Args:
        out: the folder of ``rounds.csv`` and :data:`RECORD`.
        configuration: what the rows depend on (:func:`federation_record`).
        has_rows: whether ``out`` holds rows this run would keep.

    Raises:
        ConfigurationError: naming every setting that differs, before any client trains.
    """
    path = out / RECORD
    if has_rows and path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        found = differences(recorded, configuration, only_old_keys=False)
        if found:
            raise ConfigurationError(
                f"{out} holds rounds of another configuration: resuming would mix both in rounds.csv and "
                "summary.md.\n"
                + "\n".join(f"  `{key}`: {show(old)} in {path}, {show(new)} now" for key, old, new in found)
                + "\nPass another `--out`, or the recorded values to resume."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(configuration, indent=2, sort_keys=True) + "\n")
