"""The federated experiment across scenarios and seeds: one :class:`~kdlightning.federated.Federation` per cell.

A :class:`FederatedExperiment` runs the same federation (network, clients, rounds, starts) under several partition
scenarios (IID, Dirichlet 1.0 / 0.5 / 0.1, label skew, ...) and seeds, each ``(scenario, seed)`` a cell with its
own directory, and reports how many communication rounds each start saves against fresh FedAvg with its 95%
interval over seeds (:mod:`kdlightning.stats`): a reduction read from one seed may be noise.

- ``<out>/rounds.csv``, ``<out>/summary.md``, ``<out>/accuracy.png``: the experiment's results
  (:class:`~kdlightning.federated.experiment_records.ExperimentRecords`), written atomically after each cell. A
  cell whose rows cover every start and round is not run again.
- ``<out>/cells/<scenario>-seed<seed>/``: each cell's own outputs (its :class:`Federation`'s), the scenario's name
  made a directory name by :func:`~kdlightning.reporting.slug` (:func:`cell_directory`).

``kdl federate`` runs an experiment when its config (or the command line) gives ``scenarios`` or ``seeds``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlightning import pipeline
from kdlightning.data import Partitioner
from kdlightning.errors import ConfigurationError, RunError
from kdlightning.federated.config import DEFAULT_CONFIG, FederationConfig
from kdlightning.federated.experiment_records import CellKey, ExperimentRecords
from kdlightning.federated.federation import Federation
from kdlightning.federated.records import check_record
from kdlightning.federated.strategy import strategy_name
from kdlightning.reporting import read_csv, slug

__all__ = ["FederatedExperiment", "cell_directory", "experiment_parser", "load_experiment"]


class FederatedExperiment:
    """Run a :class:`Federation` per (scenario, seed) and report the reduction in rounds with its 95% interval.

    Building one builds every cell's :class:`Federation` (each only keeps its settings), so a scenario given twice
    or a bad value fails at once; :meth:`check` checks every cell's data, partition and networks before any client
    trains, and :meth:`run` calls it first.

    Args:
        federation: the settings of every cell. A cell's ``partitioner`` and ``seed`` are its scenario and seed,
            its ``out`` is ``<out>/cells/<scenario>-seed<seed>`` (:func:`cell_directory`), and its W&B runs join the
            experiment's group.
        scenarios: partitioners, one scenario each (their names must differ); None for ``federation.partitioner``
            alone.
        seeds: seeds, one repetition of every scenario each; None for ``federation.seed`` alone.

    Examples:
        ``FederatedExperiment(FederationConfig(network=MLP, rounds=20, out="runs/federated/experiment"),
        scenarios=[IIDPartitioner(), DirichletPartitioner(0.1)], seeds=[0, 1]).run()``.
    """

    def __init__(
        self,
        federation: FederationConfig,
        scenarios: Sequence[Partitioner] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> None:
        if scenarios is not None and not scenarios:
            raise ConfigurationError("`scenarios` is empty: give at least one partitioner, or None for `partitioner`.")
        if seeds is not None and not seeds:
            raise ConfigurationError("`seeds` is empty: give at least one seed, or None for `seed`.")
        self.config = federation
        self.scenarios = list(scenarios) if scenarios is not None else [federation.partitioner]
        self.seeds = [int(s) for s in seeds] if seeds is not None else [int(federation.seed)]
        self.out = federation.out
        self.cells: dict[CellKey, Federation] = {}
        for seed in self.seeds:  # seed by seed: an experiment cut short has every scenario at its first seeds
            for scenario in self.scenarios:
                name = str(scenario)
                if (name, seed) in self.cells:
                    raise ConfigurationError(
                        f"Scenario {name!r} with seed {seed} is given twice (`scenarios`, `seeds`)."
                    )
                logger = federation.logger
                if logger is not False:  # W&B: every cell's runs in the experiment's group
                    logger = {"group": self.out.name, **(logger if isinstance(logger, dict) else {})}
                cell = dataclasses.replace(
                    federation,
                    partitioner=scenario,
                    seed=seed,
                    out=cell_directory(self.out, name, seed),  # written to only when it runs
                    logger=logger,
                )
                self.cells[(name, seed)] = Federation(cell)
        self._records: ExperimentRecords | None = None

    def check(self) -> None:
        """Check every cell (:meth:`Federation.check`) before any client trains; once, later calls return."""
        if self._records is not None:
            return
        for federation in self.cells.values():
            federation.check()
        first = next(iter(self.cells.values()))
        self._records = ExperimentRecords(
            out=self.out,
            cells=list(self.cells),
            seeds=self.seeds,
            starts=first.starts,
            rounds=self.config.rounds,
            targets=self.config.targets,
            dataset=type(self.config.dataset).__name__,
            num_clients=self.config.num_clients,
            local_epochs=self.config.local_epochs,
            strategy=strategy_name(self.config.strategy),
        )

    @property
    def records(self) -> ExperimentRecords:
        """What the experiment writes in ``out``: its rows, summary and plot (after :meth:`check`)."""
        if self._records is None:
            raise RunError("The experiment has not been checked: call `FederatedExperiment.check()` first.")
        return self._records

    def configuration(self) -> dict[str, Any]:
        """What every cell's rows depend on beside its scenario and seed (:meth:`Federation.configuration`)."""
        first = next(iter(self.cells.values()))
        return {k: v for k, v in first.configuration().items() if k not in ("partitioner", "seed")}

    def run(self, verbose: bool = False) -> list[dict[str, Any]]:
        """Check, then run (or resume) every cell in Flower's simulation; return the rows of ``rounds.csv``.

        A cell already in ``rounds.csv`` with every start and round is not run again; one cut short resumes
        (its finished starts are kept, see :func:`~kdlightning.federated.apps.run`).
        """
        from kdlightning.federated.apps import run

        self.check()
        records = self.records
        by_cell = records.rows_by_cell(read_csv(self.out / "rounds.csv"))
        finished = records.finished_cells([row for rows in by_cell.values() for row in rows])
        check_record(self.out, self.configuration(), has_rows=bool(finished))
        for key, federation in self.cells.items():
            if key in finished:
                continue
            scenario, seed = key
            by_cell[key] = [{"scenario": scenario, "seed": seed, **row} for row in run(federation, verbose=verbose)]
            records.write([row for rows in by_cell.values() for row in rows])
        rows = [row for key in self.cells for row in by_cell.get(key, [])]
        records.write(rows)
        return rows


def cell_directory(out: Path, scenario: str, seed: int) -> Path:
    """The directory of the cell ``(scenario, seed)`` of the experiment in ``out``.

    ``<out>/cells/<slug>-seed<seed>``, the scenario's name made a directory name by :func:`~kdlightning.reporting.slug`
    (``dirichlet(alpha=0.5)`` -> ``dirichlet-alpha-0.5``). A cell that an experiment wrote under its earlier name
    (``dirichlet_alpha_0.5-seed0``) resumes there, while the directory of the current name does not exist.

    Examples:
        >>> cell_directory(Path("runs/x"), "dirichlet(alpha=0.5)", 0).as_posix()
        'runs/x/cells/dirichlet-alpha-0.5-seed0'
    """
    cells = out / "cells"
    current = cells / f"{slug(scenario) or 'scenario'}-seed{seed}"
    earlier = cells / f"{re.sub(r'[^A-Za-z0-9.]+', '_', scenario).strip('_') or 'scenario'}-seed{seed}"
    return earlier if earlier.is_dir() and not current.exists() else current


def experiment_parser(args: Sequence[str] = (), **kwargs: Any) -> Any:
    """``kdl federate``'s parser: :class:`FederationConfig`'s arguments, plus ``scenarios`` and ``seeds`` lists.

    Args:
        args: the arguments it will parse (an explicit ``-c`` replaces the embedded default config).
        **kwargs: more ``ArgumentParser`` options (e.g. ``formatter_class``).
    """
    parser = pipeline.command_parser(FederationConfig, "kdl federate", DEFAULT_CONFIG, args, **kwargs)
    parser.add_argument(
        "--scenarios",
        type=list[Partitioner] | None,
        default=None,
        help="partitioners to run the federation under, one scenario each (an experiment across scenarios and seeds)",
    )
    parser.add_argument(
        "--seeds", type=list[int] | None, default=None, help="seeds to repeat every scenario with (an experiment)"
    )
    return parser


def load_experiment(args: Sequence[str]) -> FederatedExperiment:
    """The :class:`FederatedExperiment` of ``kdl federate``'s arguments (``-c CONFIG``, ``--out DIR``, overrides).

    Without ``scenarios`` and ``seeds`` it has one cell, the config's federation. It is not checked yet: its
    :meth:`~FederatedExperiment.run` checks it first.

    Examples:
        ``load_experiment(["-c", "configs/federated/fashion_mnist_scenarios.yaml", "--rounds=10"]).run()``.
    """
    given = [str(arg) for arg in args]
    parser = experiment_parser(given)
    init = parser.instantiate(parser.parse_args(given)).as_dict()
    init.pop("config", None)
    scenarios, seeds = init.pop("scenarios", None), init.pop("seeds", None)
    return FederatedExperiment(FederationConfig(**init), scenarios=scenarios, seeds=seeds)
