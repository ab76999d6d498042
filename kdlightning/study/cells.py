"""How a :class:`~kdlightning.study.Study` runs tuned KD and a cell's batched members.

:class:`TunedCells` is the part of the study that runs tuned KD's search for a scenario and seed, and
a cell's methods as batched members (:class:`~kdlightning.methods.BatchedMembers`) beside the search's
grid. It is a base class of :class:`~kdlightning.study.Study` and uses its pieces (the pre-trained
start, the trainer, the results row).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from kdlightning.batching import MemberFit, fit_members
from kdlightning.data import PartitionedDataModule, Partitioner
from kdlightning.errors import DivergedError
from kdlightning.methods import DistillationModule, VanillaKD
from kdlightning.tuning import Search, TrialBuilder, TuneOptions, TuneResult

__all__ = ["TUNED_KD", "TUNED_KD_PUBLIC", "TUNED_NAMES", "TunedCells"]

TUNED_KD = "tuned_kd"
"""The name of tuned KD in a study's results: :class:`~kdlightning.VanillaKD` with the values a search chose
on the student party's own validation split."""

TUNED_KD_PUBLIC = "tuned_kd_public"
"""Tuned KD whose search validated on the public split (held out before partitioning, never trained on)."""

TUNED_NAMES = {"own": TUNED_KD, "public": TUNED_KD_PUBLIC}
"""Tuned KD's name in the results for each ``tuning.validation``."""


class TunedCells:
    """Tuned KD's search and a cell's batched members, for :class:`~kdlightning.study.Study`."""

    out: Path
    epochs: int
    student_party: int
    max_members: int | None
    tuned_kd: bool
    tuning: TuneOptions
    _before: dict[tuple[str, int], float]

    @property
    def tuned_names(self) -> list[str]:
        """Tuned KD's runs of each cell: ``tuned_kd`` (own validation) and/or ``tuned_kd_public``."""
        return [TUNED_NAMES[mode] for mode in self.tuning.validations] if self.tuned_kd else []

    @staticmethod
    def validation_of(name: str) -> str:
        """Where the search of tuned run ``name`` validates (``own`` or ``public``)."""
        return {tuned: mode for mode, tuned in TUNED_NAMES.items()}[name]

    def tuning_dir(self, scenario: Partitioner, seed: int, validation: str = "own") -> Path:
        """Where tuned KD's search for ``scenario`` and ``seed`` (validating on ``validation``) keeps its files."""
        suffix = "" if validation == "own" else f"-{validation}"
        return self.out / "tuning" / f"{_slug(str(scenario))}-seed{seed}{suffix}"

    def _search(
        self, scenario: Partitioner, seed: int, build: TrialBuilder, description: Any, batched: bool, validation: str
    ) -> Search:
        """Tuned KD's search for ``scenario`` and ``seed`` (its points as batched members when ``batched``)."""
        out = self.tuning_dir(scenario, seed, validation)
        # the study reports the chosen point's test accuracy
        options = dataclasses.replace(
            self.tuning, test=True, batched=batched, max_members=self.max_members, validation=validation
        )
        hint = f"Pass another `--out` to `kdl study`, or delete {out} to search this cell again."
        if options.storage is not None:  # one storage, one named search per scenario and seed
            options = dataclasses.replace(options, study_name=f"{options.study_name}-{out.name}")
            hint = (
                "Pass another `--out` or `--tuning.study_name` to `kdl study` "
                f"(this cell's search is {options.study_name!r})."
            )
        return Search(
            build,
            VanillaKD,
            options,
            out,
            description=description,
            seed=seed,
            cache_dir=self.out / "cache",
            verbose=False,
            conflict_hint=hint,
            heatmap=False,  # tuning.png shows every cell's grid
        )

    def run_tuned_kd(self, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        """Tuned KD: search :class:`~kdlightning.VanillaKD`'s values on a validation split, test the chosen point.

        Every trial starts from the same pre-trained student and reads the teacher's outputs from the
        study's cache; the search resumes from its storage if the study was killed during it. ``tuned_kd``
        validates on the student party's own split, ``tuned_kd_public`` on the public split.
        """
        start = time.perf_counter()
        result = self.tuned_search(scenario, seed, batched=False, validation=self.validation_of(name)).run()
        return self._tuned_row(name, scenario, seed, result, time.perf_counter() - start)

    def tuned_search(self, scenario: Partitioner, seed: int, batched: bool, validation: str = "own") -> Search:
        """Tuned KD's search for ``scenario`` and ``seed``: trials built from the cell's pre-trained networks."""
        data, student, teacher, _ = self._start(scenario, seed)

        def build(values: dict[str, float], trial_seed: int, callbacks: Sequence[L.Callback]) -> _Trial:
            trial_data = self.datamodule(scenario, trial_seed, self.student_party)
            L.seed_everything(trial_seed, verbose=False)
            model = VanillaKD(copy.deepcopy(student), copy.deepcopy(teacher), data.num_classes, **values)
            return _Trial(model, trial_data, functools.partial(self._trainer, self.epochs, callbacks))

        description = [self._key(scenario, seed, repr(student), repr(teacher)), self.epochs]
        return self._search(scenario, seed, build, description, batched, validation)

    def _tuned_row(
        self, name: str, scenario: Partitioner, seed: int, result: TuneResult, seconds: float
    ) -> dict[str, Any]:
        chosen = {key.rsplit(".", 1)[-1]: value for key, value in result.best_params.items()}
        return self._row(
            scenario,
            seed,
            name,
            **{"class": VanillaKD.__name__},
            acc_before=self._before[(str(scenario), seed)],
            acc_after=result.test_metrics["test/acc"],
            hyperparameters=json.dumps({**chosen, "trials": len(result.trials), "val_acc": result.best_value}),
            seconds=round(seconds, 2),
            validation=self.validation_of(name),
        )

    def run_cell(self, scenario: Partitioner, seed: int, names: Sequence[str]) -> list[dict[str, Any]]:
        """Run methods ``names`` of one cell as batched members (tuned KD's grid among them); return their rows.

        Each member's row is the one its own fit would give; a member whose loss turns non-finite is a failed
        row. With tuned KD, the members train beside the grid's points in the search's fits.
        """
        try:
            data, student, teacher, _ = self._start(scenario, seed)
        except FloatingPointError:  # the cell's pre-training diverged: every run is a failed row
            return [self.run_recorded(name, scenario, seed) for name in names]
        tuned = [name for name in names if name in TUNED_NAMES.values()]
        builders = {
            name: functools.partial(self._build, self._factory(name), student, teacher, data.num_classes, seed)
            for name in names
            if name not in tuned
        }
        searches: dict[str, tuple[TuneResult, float]] = {}
        fits: dict[str, MemberFit] = {}
        try:
            # one grid for every validation: the first search trains it (the other members beside it),
            # each search records its points validated on its own split, then tests its chosen point
            grids = {
                name: self.tuned_search(scenario, seed, batched=True, validation=self.validation_of(name))
                for name in tuned
            }
            for index, (name, search) in enumerate(grids.items()):
                start = time.perf_counter()
                beside = list(grids.values())[1:] if index == 0 else []
                result = search.run(extra=builders if index == 0 else None, beside=beside)
                fits.update(result.extra)
                spent = time.perf_counter() - start - sum(fit.seconds for fit in result.extra.values())
                searches[name] = (result, spent)
            if not tuned:
                for chunk in fit_members(
                    builders, data, self._members_trainer, max_members=self.max_members, test=list(builders)
                ):
                    fits.update(chunk)
        except BaseException as error:
            error.add_note(f"in the batched run of `kdl study` for scenario {scenario}, seed {seed}, methods {names}")
            raise
        return [
            self._tuned_row(name, scenario, seed, *searches[name])
            if name in searches
            else self._member_row(name, scenario, seed, fits[name])
            for name in names
        ]

    def _members_trainer(self, callbacks: Sequence[L.Callback]) -> L.Trainer:
        return self._trainer(self.epochs, [self._cache(), *callbacks])

    def _member_row(self, name: str, scenario: Partitioner, seed: int, fit: MemberFit) -> dict[str, Any]:
        hyperparameters = json.dumps(dict(fit.model.hparams), sort_keys=True, default=str)
        values: dict[str, Any] = {"class": type(fit.model).__name__, "acc_before": self._before[(str(scenario), seed)]}
        if fit.error is not None:
            values.update(acc_after="", hyperparameters=hyperparameters, error=f"{DivergedError.__name__}: {fit.error}")
            return self._row(scenario, seed, name, **values)
        values.update(acc_after=fit.test["test/acc"], hyperparameters=hyperparameters, seconds=round(fit.seconds, 2))
        return self._row(scenario, seed, name, **values)

    # ------------------------------------------------------------------ resuming


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


def _slug(text: str) -> str:
    """``dirichlet(alpha=0.5)`` → ``dirichlet-alpha-0.5``: a directory name."""
    return "-".join("".join(c if c.isalnum() or c == "." else " " for c in text).split())
