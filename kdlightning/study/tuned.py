"""Tuned runs in a study: the search of a cell (scenario and seed), built from the cell's pre-trained networks.

A tuned run is tuned KD (:class:`~kdlightning.VanillaKD`) or one of the study's methods, its float arguments
searched over the study's ``tuning`` space. Every trial of a cell's search starts from the same pre-trained
student and reads the teacher's outputs from the study's cache; the search keeps its files under
``<out>/tuning/[<method>/]<scenario>-seed<seed>[-public]/`` and resumes from them. :class:`TunedSearches` builds
the searches and turns a search's result into the cell's row.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import lightning as L
from torch import nn

from kdlightning.data import PartitionedDataModule, Partitioner
from kdlightning.methods import DistillationModule, VanillaKD
from kdlightning.pipeline import describe
from kdlightning.reporting import ResultRow
from kdlightning.study.config import TUNED_KD, StudyConfig
from kdlightning.study.logged import StudyRuns
from kdlightning.tracking import network_name
from kdlightning.tuning import Search, TuneResult

__all__ = ["Start", "TunedSearches"]

Start = tuple[PartitionedDataModule, nn.Module, nn.Module, float]
"""A cell's start: the student party's data, the pre-trained student and teacher, the student's accuracy before."""


class TunedSearches:
    """The tuned runs' searches of a study's cells, and their rows.

    Args:
        config: the study's configuration.
        start: a cell's start, by ``(scenario, seed)`` (:meth:`~kdlightning.study.cells.CellRunner.start`).
        classes: each tuned method's class (a key of ``config.methods``), whose float arguments are searched.
    """

    def __init__(
        self,
        config: StudyConfig,
        start: Callable[[Partitioner, int], Start],
        classes: Mapping[str, type[DistillationModule]] | None = None,
    ) -> None:
        self.config = config
        self.start = start
        self.classes = dict(classes or {})

    def method_class(self, name: str) -> type[DistillationModule]:
        """The class tuned run ``name`` trains: VanillaKD for tuned KD, else its method's."""
        method = self.config.tuned_runs[name].method
        return VanillaKD if method is None else self.classes[method]

    def factory(self, name: str) -> Callable[..., DistillationModule]:
        """Builds tuned run ``name``'s method from ``(student, teacher, num_classes, **searched values)``."""
        method = self.config.tuned_runs[name].method
        return VanillaKD if method is None else self.config.methods[method]

    def search(self, scenario: Partitioner, seed: int, batched: bool, name: str = TUNED_KD) -> Search:
        """The search of tuned run ``name`` for ``scenario`` and ``seed`` (points as batched members if ``batched``)."""
        config = self.config
        run = config.tuned_runs[name]
        data, student, teacher, _ = self.start(scenario, seed)
        factory = self.factory(name)

        def build(values: Mapping[str, float], trial_seed: int, callbacks: Sequence[L.Callback]) -> _Trial:
            trial_data = config.datamodule(scenario, trial_seed, config.student_party)
            L.seed_everything(trial_seed, verbose=False)
            hyperparameters: dict[str, Any] = dict(values)  # the searched floats: temperature, alpha
            model = factory(copy.deepcopy(student), copy.deepcopy(teacher), data.num_classes, **hyperparameters)
            config.optimized(model)
            return _Trial(model, trial_data, functools.partial(config.fit_trainer, config.epochs, callbacks))

        parts = [repr(student), repr(teacher), *config.teacher_parts]
        parts += [] if run.method is None else [describe(factory)]
        description = [config.key(scenario, seed, *parts), config.epochs]
        validation = run.validation
        out = config.tuning_dir(scenario, seed, validation, run.method)
        # the study reports the chosen point's test accuracy
        options = dataclasses.replace(
            config.tuning, test=True, batched=batched, max_members=config.max_members, validation=cast(Any, validation)
        )
        if options.logger is True and isinstance(config.logger, Mapping):  # the study's W&B arguments
            options = dataclasses.replace(options, logger=dict(config.logger))
        hint = f"Pass another `--out` to `kdl study`, or delete {out} to search this cell again."
        if options.storage is not None:  # one storage, one named search per scenario and seed
            cell = "-".join(out.relative_to(config.out / "tuning").parts)  # e.g. iid-seed0, dpkd-iid-seed0-public
            options = dataclasses.replace(options, study_name=f"{options.study_name}-{cell}")
            hint = (
                "Pass another `--out` or `--tuning.study_name` to `kdl study` "
                f"(this cell's search is {options.study_name!r})."
            )
        return Search(
            build,
            self.method_class(name),
            options,
            out,
            description=description,
            seed=seed,
            cache_dir=config.out / "cache",
            verbose=False,
            conflict_hint=hint,
            heatmap=False,  # tuning.png shows every cell's grid
            tracking=self.tracking(scenario, seed, name),
        )

    def tracking(self, scenario: Partitioner, seed: int, name: str) -> dict[str, Any]:
        """With ``tuning.logger``: the W&B settings of a search's trial runs, grouped with the study's runs.

        Each trial is named ``<scenario>/seed<seed>/<tuned run>/trial<N>/<values>`` (job type ``trial``); the
        study's ``logger`` arguments (a dict) are the defaults of ``tuning.logger: true``.
        """
        config = self.config
        runs = StudyRuns(config)
        config_keys = {
            "partition": str(scenario),
            "seed": seed,
            "student": network_name(config.student),
            "teacher": network_name(config.teacher),
            "tuned": name,
        }
        return {**runs.settings(f"{scenario}/seed{seed}/{name}", "trial"), "config": config_keys}

    def row(
        self,
        name: str,
        scenario: Partitioner,
        seed: int,
        before: float,
        result: TuneResult,
        seconds: float,
        teacher: float | str = "",
    ) -> ResultRow:
        """The row of tuned run ``name``: the chosen values, the search's trials and validation, the test accuracy."""
        chosen = {key.rsplit(".", 1)[-1]: value for key, value in result.best_params.items()}
        return ResultRow(
            str(scenario),
            seed,
            name,
            self.method_class(name).__name__,
            acc_before=before,
            acc_after=result.test_metrics["test/acc"],
            acc_teacher=teacher,
            hyperparameters={**chosen, "trials": len(result.trials), "val_acc": result.best_value},
            seconds=round(seconds, 2),
            epochs=self.config.epochs,
            validation=self.config.validation_of(name),
        )


class _Trial:
    """One trial of tuned KD's search; its trainer is built when first asked for (a batched member needs none)."""

    def __init__(
        self, model: DistillationModule, datamodule: PartitionedDataModule, trainer: Callable[[], L.Trainer]
    ) -> None:
        self.model, self.datamodule, self._make_trainer = model, datamodule, trainer

    @functools.cached_property
    def trainer(self) -> L.Trainer:
        """The trial's trainer."""
        return self._make_trainer()
