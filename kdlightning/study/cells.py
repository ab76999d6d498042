"""A study's cell (scenario and seed): its runs from one pre-trained start, each a row of ``results.csv``.

:class:`CellRunner` runs the missing runs of a cell: the control, the methods and tuned KD. With ``batched`` it
builds the cell's members, the control and every method that can be one beside tuned KD's grid points (offered
by each validation's search, :class:`~kdlightning.study.tuned.TunedSearches`), fits them as
:class:`~kdlightning.methods.BatchedMembers` and hands each search its points' fits; the other runs (DML) are
fitted apart. A run that diverges is a failed row.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from torch import nn

from kdlightning.batching import MemberFit, fit_members
from kdlightning.data import Partitioner
from kdlightning.errors import DivergedError
from kdlightning.methods import DistillationModule, NotBatchable, StudentOnly
from kdlightning.reporting import ResultRow, error_line
from kdlightning.study.config import MethodFactory, StudyConfig
from kdlightning.study.logged import StudyRuns
from kdlightning.study.pretraining import Pretraining
from kdlightning.study.progress import Step, epochs_text, training_samples
from kdlightning.study.tuned import Start, TunedSearches
from kdlightning.tuning import Search, TuneResult
from kdlightning.tuning.grid import Point

__all__ = ["CellRunner"]

Starting = Callable[[Partitioner, int, list[str], bool], None]
"""Called before each step of a cell: its scenario, seed, runs and whether they train together."""

Finished = Callable[[list[dict[str, Any]]], None]
"""Called after each step of a cell with its rows (as ``results.csv`` holds them)."""


class CellRunner:
    """Runs a study's cells, each from the cell's pre-trained start.

    Args:
        config: the study's configuration.
        pretraining: the parties' pre-trained networks.
        members: the methods that train as batched members (the control and those that can be members).
        described: each method's class and hyperparameters as ``study.json`` records them (a failed row's).
        classes: each tuned method's class (:class:`~kdlightning.study.tuned.TunedSearches`).
    """

    def __init__(
        self,
        config: StudyConfig,
        pretraining: Pretraining,
        members: frozenset[str],
        described: Mapping[str, Mapping[str, Any]],
        classes: Mapping[str, type[DistillationModule]] | None = None,
    ) -> None:
        self.config, self.pretraining = config, pretraining
        self.members, self.described = members, described
        self.tuned = TunedSearches(config, self.start, classes)
        self._before: dict[tuple[str, int], float] = {}
        self._teacher: dict[tuple[str, int], float] = {}
        self._diverged: dict[tuple[str, int], str] = {}
        self.logged = StudyRuns(config)
        """Each run as a W&B run, with the study's ``logger``."""
        self._histories: dict[str, list[dict[str, float]]] = {}

    # ------------------------------------------------------------------ a cell's start
    def start(self, scenario: Partitioner, seed: int) -> Start:
        """The student's data, both pre-trained networks and the student's test accuracy before any method."""
        config = self.config
        data = config.datamodule(scenario, seed, config.student_party)
        key = (str(scenario), seed)
        if key in self._diverged:  # every method of this cell starts from the pre-training that diverged
            raise DivergedError(self._diverged[key])
        try:
            student = self.pretraining.pretrained("student", scenario, seed)
            teacher = self.pretraining.pretrained("teacher", scenario, seed)
        except FloatingPointError as error:
            self._diverged[key] = str(error)
            raise
        if key not in self._before:
            self._before[key] = self.test_accuracy(StudentOnly(copy.deepcopy(student), data.num_classes), data)
            # the teacher read as it reads alone (its own tokenizer), on the same global test set
            alone = config.datamodule(scenario, seed, config.student_party, network="teacher")
            self._teacher[key] = self.test_accuracy(StudentOnly(copy.deepcopy(teacher), data.num_classes), alone)
        return data, student, teacher, self._before[key]

    def teacher_accuracy(self, scenario: Partitioner, seed: int) -> float | str:
        """The teacher party's pre-trained network's test accuracy in a cell ("" before :meth:`start` measured it)."""
        return self._teacher.get((str(scenario), seed), "")

    def test_accuracy(self, model: DistillationModule, data: L.LightningDataModule) -> float:
        """The student's accuracy on the global test set."""
        return float(self.config.fit_trainer(1).test(model, datamodule=data, verbose=False)[0]["test/acc"])

    # ------------------------------------------------------------------ a cell's runs
    def run_missing(
        self,
        scenario: Partitioner,
        seed: int,
        names: Sequence[str],
        starting: Starting | None = None,
        finished: Finished | None = None,
    ) -> list[dict[str, Any]]:
        """Run the runs ``names`` of one cell; return their rows (as ``results.csv`` holds them).

        The runs that train together (:meth:`batched_runs`) are one step, run first; each other run is a step of
        its own. A step calls ``starting(scenario, seed, step, together)`` before it and ``finished(its rows)``
        after: the sequential study writes its files there, a Ray task waits for the cell's rows.
        """
        together = self.batched_runs(names)
        steps = [together] if together else []
        steps += [[name] for name in names if name not in together]
        rows: list[dict[str, Any]] = []
        for step in steps:
            if starting is not None:
                starting(scenario, seed, step, step is together)
            if step is together:
                step_rows = [row.to_csv() for row in self.run_together(scenario, seed, step)]
            else:
                step_rows = [self.run_recorded(step[0], scenario, seed).to_csv()]
            if finished is not None:
                finished(step_rows)
            self.logged.log_rows(step_rows, self._histories)
            self._histories.clear()
            rows += step_rows
        return rows

    def plan(self, scenario: Partitioner, seed: int, names: Sequence[str]) -> list[Step]:
        """The progress bar's steps of :meth:`run_missing`: the runs that train together, then each other run.

        A step's work is epochs × the student's training samples × the networks it trains (DML's two; each point
        of a tuned run's grid, which a search's validations share when batched).
        """
        config = self.config
        samples = training_samples(config.datamodule(scenario, seed, config.student_party))
        cell = f"{scenario} seed {seed}"

        def networks(name: str) -> int:
            return 2 if self.described.get(name, {}).get("class") == "DeepMutualLearning" else 1

        together = self.batched_runs(names)
        steps = []
        if together:
            plain = [name for name in together if name not in config.tuned_runs]
            grids: dict[str | None, str] = {}  # a tuned method's grid: one set of points for all its validations
            for name in together:
                if name in config.tuned_runs:
                    grids.setdefault(config.tuned_runs[name].method, name)
            members = sum(networks(name) for name in plain) + sum(
                config.fits(name) * networks(name) for name in grids.values()
            )
            what = ", ".join(plain + [f"{config.fits(name)} points of {name}" for name in grids.values()])
            count = len(plain) + sum(config.fits(name) for name in grids.values())
            label = f"{cell}: {what} ({count} batched members, {epochs_text(config.epochs)})"
            steps.append(
                Step(
                    (str(scenario), seed, tuple(together)),
                    label,
                    "members",
                    config.epochs * samples * members,
                    runs=len(together),
                )
            )
        for name in names:
            if name in together:
                continue
            trials = config.fits(name)
            what = f"{name} ({trials} trials, one fit each)" if name in config.tuned_runs else name
            kind = f"{'tuned ' if name in config.tuned_runs else ''}{self.described.get(name, {}).get('class', name)}"
            work = config.epochs * samples * networks(name) * trials
            steps.append(
                Step(
                    (str(scenario), seed, (name,)), f"{cell}: {what}, {epochs_text(config.epochs)}", kind, work, runs=1
                )
            )
        return steps

    def batched_runs(self, names: Sequence[str]) -> list[str]:
        """Which of a cell's runs ``names`` train together as batched members (none unless ``batched``)."""
        if not self.config.batched:
            return []
        grid = self.config.tuning.sampler == "grid"
        runs = self.config.tuned_runs
        # a tuned run's points are members where its method is one (tuned KD's VanillaKD always is)
        tuned = {name for name, run in runs.items() if grid and (run.method is None or run.method in self.members)}
        return [name for name in names if name in self.members or name in tuned]

    def run_recorded(self, name: str, scenario: Partitioner, seed: int) -> ResultRow:
        """:meth:`run`, with a diverging run recorded as a failed row (as tuned KD's search records a trial).

        A failed row has the error's first line under ``error`` and no ``acc_after``; any other error propagates,
        with a note naming the run.
        """
        try:
            return self.run(name, scenario, seed)
        except FloatingPointError as error:
            return self._failed(name, scenario, seed, f"{type(error).__name__}: {error_line(error)}")
        except BaseException as error:
            error.add_note(f"in the run of `kdl study` for scenario {scenario}, seed {seed}, method {name!r}")
            raise

    def run(self, name: str, scenario: Partitioner, seed: int) -> ResultRow:
        """Run one method, the control or tuned KD from the pre-trained student, on its own; return its row."""
        if name in self.config.tuned_runs:
            return self._run_tuned(name, scenario, seed)
        return self._fit(name, scenario, seed)

    def _factory(self, name: str) -> MethodFactory:
        return self.config.control_factory if name == self.config.control else self.config.methods[name]

    def _build(self, name: str, student: nn.Module, teacher: nn.Module, num_classes: int, seed: int) -> Any:
        """Method ``name`` from fresh copies of the pre-trained networks, seeded as every run of its cell."""
        L.seed_everything(seed, verbose=False)
        return self.config.optimized(self._factory(name)(copy.deepcopy(student), copy.deepcopy(teacher), num_classes))

    def _fit(self, name: str, scenario: Partitioner, seed: int) -> ResultRow:
        data, student, teacher, before = self.start(scenario, seed)
        model = self._build(name, student, teacher, data.num_classes, seed)
        start = time.perf_counter()
        # no validation: a run is judged by its test accuracy after the last epoch, and nothing reads it
        # (unless a scheduler steps on a validation metric)
        unread = {"limit_val_batches": 0} if getattr(model, "lr_scheduler", None) is None else {}
        self.config.fit_trainer(self.config.epochs, [self.config.cache()], **unread).fit(model, datamodule=data)
        seconds = time.perf_counter() - start
        return self._row(name, scenario, seed, model, self.test_accuracy(model, data), before, seconds)

    def _run_tuned(self, name: str, scenario: Partitioner, seed: int) -> ResultRow:
        """A tuned run, trial by trial: search on a validation split, test the chosen point."""
        start = time.perf_counter()
        _, _, _, before = self.start(scenario, seed)
        search = self.tuned.search(scenario, seed, batched=False, name=name)
        result = search.run()
        return self.tuned.row(
            name, scenario, seed, before, result, time.perf_counter() - start, self.teacher_accuracy(scenario, seed)
        )

    # ------------------------------------------------------------------ rows
    def _row(
        self,
        name: str,
        scenario: Partitioner,
        seed: int,
        model: DistillationModule,
        after: float,
        before: float,
        seconds: float,
    ) -> ResultRow:
        hyperparameters = json.loads(json.dumps(dict(model.hparams), sort_keys=True, default=str))
        return ResultRow(
            str(scenario),
            seed,
            name,
            type(model).__name__,
            acc_before=before,
            acc_after=after,
            acc_teacher=self.teacher_accuracy(scenario, seed),
            hyperparameters=hyperparameters,
            seconds=round(seconds, 2),
            epochs=self.config.epochs,
        )

    def _failed(
        self, name: str, scenario: Partitioner, seed: int, error: str, model: DistillationModule | None = None
    ) -> ResultRow:
        """The failed row of run ``name``: the method's class and hyperparameters, the error, no accuracy after."""
        described = self.described.get(name, {})
        if model is not None:
            kind, values = type(model).__name__, dict(model.hparams)
        else:
            kind, values = described.get("class", ""), dict(described.get("hyperparameters", {}))
        return ResultRow(
            str(scenario),
            seed,
            name,
            kind,
            acc_before=self._before.get((str(scenario), seed), ""),
            acc_after=None,
            acc_teacher=self.teacher_accuracy(scenario, seed),
            hyperparameters=json.loads(json.dumps(values, sort_keys=True, default=str)),
            epochs=self.config.epochs,
            error=error,
        )

    # ------------------------------------------------------------------ a cell's runs together
    def run_together(self, scenario: Partitioner, seed: int, names: Sequence[str]) -> list[ResultRow]:
        """Run ``names`` of one cell as batched members (tuned KD's grid among them); return their rows.

        Each member's row is the one its own fit would give; a member whose loss turns non-finite is a failed row.
        With tuned KD, the searches of each validation offer their unfinished grid points; the points train once,
        beside the cell's methods, every member validated on each search's split, and each search records its
        points and tests its chosen one.
        """
        try:
            data, student, teacher, before = self.start(scenario, seed)
        except FloatingPointError:  # the cell's pre-training diverged: every run is a failed row
            return [self.run_recorded(name, scenario, seed) for name in names]
        tuned = [name for name in names if name in self.config.tuned_runs]
        builders = {
            name: functools.partial(self._build, name, student, teacher, data.num_classes, seed)
            for name in names
            if name not in tuned
        }
        fits: dict[str, MemberFit] = {}
        results: dict[str, tuple[TuneResult, float]] = {}
        try:
            if tuned:
                # one fit per tuned method: its searches (one per validation) share its grid's points
                groups: dict[str | None, dict[str, Search]] = {}
                for name in tuned:
                    search = self.tuned.search(scenario, seed, batched=True, name=name)
                    groups.setdefault(self.config.tuned_runs[name].method, {})[name] = search
                for number, searches in enumerate(groups.values()):
                    group_fits, group_results = self._fit_with_grids(
                        scenario, seed, builders if number == 0 else {}, searches
                    )
                    fits.update(group_fits)
                    results.update(group_results)
            else:
                for chunk in fit_members(
                    builders, data, self._members_trainer, max_members=self.config.max_members, test=list(builders)
                ):
                    fits.update(chunk)
        except BaseException as error:
            error.add_note(f"in the batched run of `kdl study` for scenario {scenario}, seed {seed}, methods {names}")
            raise
        rows = []
        for name in names:
            if name in results:
                rows.append(
                    self.tuned.row(name, scenario, seed, before, *results[name], self.teacher_accuracy(scenario, seed))
                )
            elif fits[name].error is not None:
                failure = f"{DivergedError.__name__}: {fits[name].error}"
                rows.append(self._failed(name, scenario, seed, failure, model=fits[name].model))
            else:
                fit = fits[name]
                rows.append(self._row(name, scenario, seed, fit.model, fit.test["test/acc"], before, fit.seconds))
        self._histories.update({name: fit.history for name, fit in fits.items()})  # each member's validation
        return rows

    def _members_trainer(self, callbacks: Sequence[L.Callback]) -> L.Trainer:
        return self.config.fit_trainer(self.config.epochs, [self.config.cache(), *callbacks])

    def _fit_with_grids(
        self,
        scenario: Partitioner,
        seed: int,
        builders: Mapping[str, Callable[[], DistillationModule]],
        searches: Mapping[str, Search],
    ) -> tuple[dict[str, MemberFit], dict[str, tuple[TuneResult, float]]]:
        """Fit ``builders`` and the searches' unfinished points in one (chunked) fit; finish every search.

        The searches differ only in their validation split: the members validate on each (one validation loader
        per search, in order), and each search records its points validated on its own. A network ``torch.func``
        cannot vmap is fitted apart, each search's points on its own split.
        """
        started = time.perf_counter()
        order = list(searches.values())
        for search in order:
            search.open()
        pending = [set(search.pending_points()) for search in order]
        points: dict[str, Point] = {
            order[0].member_name(point): point
            for point in order[0].grid_points()
            if any(point in waiting for waiting in pending)
        }
        validations = [str(search.options.validation) for search in order]  # one split each: `own` or `public`
        fits: dict[str, MemberFit] = {}

        def fit(members: Mapping[str, Callable[[], DistillationModule]], index: int | None, fallback: bool) -> None:
            """Fit ``members``; record the points' fits in every search (``index``: only in that search)."""
            split: str | list[str] = validations if index is None and len(validations) > 1 else validations[index or 0]
            data = self.config.datamodule(scenario, seed, self.config.student_party, validation=split)
            for chunk in fit_members(
                members,
                data,
                self._members_trainer,
                max_members=self.config.max_members,
                test=[name for name in members if name in builders],
                fallback=fallback,
            ):
                fits.update({name: member for name, member in chunk.items() if name not in points})
                for number, search in enumerate(order):
                    if index is not None and number != index:
                        continue
                    history = 0 if index is not None else number
                    search.record(
                        {
                            points[name]: dataclasses.replace(member, history=member.histories[history])
                            for name, member in chunk.items()
                            if name in points and points[name] in pending[number]
                        }
                    )

        grid = {name: functools.partial(order[0].member, point) for name, point in points.items()}
        try:
            fit({**builders, **grid}, None, fallback=len(order) == 1)
        except NotBatchable as error:  # only with several searches: each trains its points apart
            warnings.warn(
                f"{error}. Each search's points are fitted one at a time instead (the same results, without batching).",
                stacklevel=2,
            )
            for number, search in enumerate(order):
                own = {name: functools.partial(search.member, p) for name, p in points.items() if p in pending[number]}
                extra = {name: build for name, build in builders.items() if name not in fits} if number == 0 else {}
                fit({**extra, **own}, number, fallback=True)
        spent = time.perf_counter() - started - sum(fits[name].seconds for name in builders if name in fits)
        results = {}
        for number, (name, search) in enumerate(searches.items()):
            start = time.perf_counter()
            result = search.finish()
            results[name] = (result, (spent if number == 0 else 0.0) + time.perf_counter() - start)
        return fits, results
