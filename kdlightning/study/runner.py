"""The :class:`Study`: every method, every scenario, every seed, from the same pre-trained student.

For each scenario (a partitioner) and seed it partitions the training pool, pre-trains the
teacher's and the student's models on their own parties with :class:`~kdlightning.StudentOnly`
(once per configuration), measures the student's test accuracy before, runs every method from
that same pre-trained student beside a control that continues the student alone for as many
epochs, and records each run in ``results.csv``. ``summary.md`` is recomputed from ``results.csv``
after every run, and both are written atomically: a killed study loses no finished run and
resumes where it stopped. ``study.json`` (:mod:`kdlightning.study.record`) keeps a resume from
mixing configurations; a run that diverges is recorded as a failed row and the study goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import (
    DatasetSource,
    Digits,
    DirichletPartitioner,
    IIDPartitioner,
    LabelSkewPartitioner,
    PartitionedDataModule,
    Partitioner,
    QuantitySkewPartitioner,
)
from kdlightning.errors import ConfigurationError, DivergedError
from kdlightning.interrupt import raise_if_stopped
from kdlightning.methods import DistillationModule, StudentOnly, VanillaKD, member_error
from kdlightning.pipeline import (
    NetworkFactory,
    check_trainer,
    check_trainer_for,
    check_writable,
    describe,
    digest,
    trainer,
)
from kdlightning.reporting import add_gains, error_line, read_csv
from kdlightning.study.cells import TUNED_KD, TUNED_NAMES, TunedCells
from kdlightning.study.parallel import Cell, check_ray, run_cells
from kdlightning.study.pretraining import PartyPretraining
from kdlightning.study.record import check_and_record
from kdlightning.study.report import StudyReports
from kdlightning.trainers import progress_bar, quiet
from kdlightning.tuning import TuneOptions
from kdlightning.tuning.options import check_space

__all__ = ["TUNED_KD", "MethodFactory", "NetworkFactory", "Study", "default_scenarios"]

MethodFactory = Callable[[nn.Module, nn.Module, int], DistillationModule]
"""Builds a method from ``(student, other network, num_classes)``: the other is the teacher (frozen by the
method) or DML's peer (trained), always a fresh copy of the teacher party's pre-trained model."""

_UNCHECKED_TUNING = ("storage", "study_name", "heartbeat_interval", "logger", "test", "batched", "max_members")
"""Tuning options that do not change a search's result (where it is stored, how it logs, how it batches)."""


def default_scenarios() -> list[Partitioner]:
    """IID; Dirichlet alpha 1.0, 0.5, 0.1; label skew with 2 classes per party; quantity skew (beta 1.0)."""
    return [
        IIDPartitioner(),
        DirichletPartitioner(alpha=1.0),
        DirichletPartitioner(alpha=0.5),
        DirichletPartitioner(alpha=0.1),
        LabelSkewPartitioner(classes_per_party=2),
        QuantitySkewPartitioner(beta=1.0),
    ]


class Study(TunedCells, PartyPretraining, StudyReports):
    """Compare distillation methods across partition scenarios and seeds, from one pre-trained student each.

    Args:
        student: builds the student party's network.
        teacher: builds the teacher party's network.
        methods: the methods to compare, by name; each is called with ``(student, teacher copy, num_classes)``.
        tuned_kd: also run tuned KD: per scenario and seed, a search (:mod:`kdlightning.tuning`) of
            :class:`~kdlightning.VanillaKD`'s values on a validation split, then the chosen point's test accuracy.
            ``tuning.validation`` says where: ``own`` (the student party's own split; the row ``tuned_kd``),
            ``public`` (the public split; the row ``tuned_kd_public``) or both (two rows).
        tuning: the search of tuned KD (default: the grid temperature {1, 2, 4, 8, 16} × alpha
            {0.1, 0.25, 0.5, 0.75, 0.9}, validated on the own split); its files go to
            ``<out>/tuning/<scenario>-seed<seed>[-public]/``.
        dataset: the data set (the bundled digits by default).
        scenarios: partitioners, one scenario each (default: :func:`default_scenarios`).
        seeds: seeds of the partition, the pre-training and the methods.
        num_parties: parties the pool is split across.
        student_party: the student's party.
        teacher_party: the teacher's party.
        pretrain_epochs: epochs of each party's pre-training.
        epochs: epochs of every method and of the control.
        batch_size: samples per batch.
        val_fraction: share of each party's data held out for validation.
        public_fraction: with ``tuning.validation`` public: share of the training pool held out before
            partitioning as the public validation split (drawn uniformly, like the test set; no party owns or
            trains on it; every run of the study partitions the rest).
        control: name of the control run (the student alone, same epochs and data).
        out: directory of ``results.csv``, ``summary.md``, the pre-trained checkpoints and the cache.
        trainer: ``lightning.Trainer`` settings for every fit (e.g. ``{"accelerator": "gpu", "precision":
            "bf16-mixed"}``); the study sets the epochs, one device and no logger itself.
        batched: train each cell's (scenario and seed's) control, the methods that can be members
            (:func:`~kdlightning.methods.member_error`) and tuned KD's grid as batched members
            (:class:`~kdlightning.methods.BatchedMembers`): one fit where they would be dozens, each member as
            its own fit would train it. Other methods (DML) are fitted apart. False fits every run apart.
        max_members: batched: members per fit (memory grows with it); None for a whole cell in one fit.
            Also tuned KD's ``tuning.batched`` and ``tuning.max_members``.
        ray: run the cells (scenario × seed) in parallel, one Ray task each (the ``federated`` extra): false
            runs them one after another here, true on a local Ray (``ray.init()``), an address (``auto``,
            ``ray://host:10001``) on that cluster, whose nodes must see ``out`` at the same path. ``results.csv``
            is the sequential study's, whatever order the cells finish in.
        cpus_per_cell: with ``ray``: Ray's CPUs for each cell (its torch threads, rounded, at least 1): a
            machine runs its CPUs / ``cpus_per_cell`` cells at once.
        gpus_per_cell: with ``ray``: Ray's GPUs for each cell (a fraction: cells share a GPU). Ray hides the
            GPUs from a cell that asks for none: it trains on the CPU.

    Attributes:
        configuration: what ``<out>/study.json`` records and a resume must match: ``settings`` shared by
            every run, and each method's own configuration under ``methods``.

    Raises:
        ValueError: a bad argument, including any hyperparameter of a method (each method is built once
            from fresh networks), duplicate seeds or scenarios; before any training.
    """

    def __init__(
        self,
        student: NetworkFactory,
        teacher: NetworkFactory,
        methods: dict[str, MethodFactory],
        tuned_kd: bool = True,
        tuning: TuneOptions | None = None,
        dataset: DatasetSource | None = None,
        scenarios: list[Partitioner] | None = None,
        seeds: Sequence[int] = (0, 1, 2),
        num_parties: int = 5,
        student_party: int = 0,
        teacher_party: int = 1,
        pretrain_epochs: int = 10,
        epochs: int = 10,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        public_fraction: float = 0.05,
        control: str = "student_only",
        out: str = "runs/study",
        trainer: dict[str, Any] | None = None,
        batched: bool = True,
        max_members: int | None = 32,
        ray: bool | str = False,
        cpus_per_cell: float = 1.0,
        gpus_per_cell: float = 0.0,
    ) -> None:
        if not methods and not tuned_kd:
            raise ConfigurationError("`methods` is empty and `tuned_kd` is off: name at least one method to compare.")
        for reserved, role in ((control, "the control"), *((name, "tuned KD") for name in TUNED_NAMES.values())):
            if reserved in methods:
                raise ConfigurationError(f"`methods` must not use the name {reserved!r}: it is {role}'s.")
        if not seeds:
            raise ConfigurationError("`seeds` is empty: give at least one seed.")
        _check_unique("seeds", list(seeds), "each seed is one sample of every run")
        if student_party == teacher_party:
            raise ConfigurationError(f"`student_party` and `teacher_party` must differ, both are {student_party}.")
        for name, value in (("pretrain_epochs", pretrain_epochs), ("epochs", epochs)):
            if value < 1:
                raise ConfigurationError(f"`{name}` must be >= 1, got {value!r}.")
        self.student, self.teacher, self.methods = student, teacher, dict(methods)
        self.tuned_kd, self.tuning = tuned_kd, tuning if tuning is not None else TuneOptions()
        if tuned_kd:
            check_space(self.tuning, VanillaKD, section="tuning")  # a bad search space fails now
        self.dataset = dataset if dataset is not None else Digits()
        self.scenarios = scenarios if scenarios is not None else default_scenarios()
        _check_unique("scenarios", [str(s) for s in self.scenarios], "results name a scenario by this text")
        self.seeds = list(seeds)
        self.num_parties, self.student_party, self.teacher_party = num_parties, student_party, teacher_party
        self.pretrain_epochs, self.epochs = pretrain_epochs, epochs
        self.batch_size, self.val_fraction, self.control = batch_size, val_fraction, control
        if not 0.0 < public_fraction < 1.0:
            raise ConfigurationError(f"`public_fraction` must lie in (0, 1), got {public_fraction!r}.")
        self.public_fraction = public_fraction if "public" in self.tuning.validations and tuned_kd else 0.0
        self.out = Path(out)
        self.trainer = check_trainer(trainer)
        check_ray(ray, cpus_per_cell, gpus_per_cell, self.trainer)
        self.ray, self.cpus_per_cell, self.gpus_per_cell = ray, cpus_per_cell, gpus_per_cell
        if max_members is not None and max_members < 1:
            raise ConfigurationError(f"`max_members` must be >= 1 (or None for no limit), got {max_members!r}.")
        self.batched, self.max_members = batched, max_members
        self.members: set[str] = {control}
        """Methods trained as batched members when ``batched`` (the control, and those that can be members)."""
        self._before: dict[tuple[str, int], float] = {}
        self.seconds: dict[str, float] = {"pretraining": 0.0, "total": 0.0}
        """Wall time of the last :meth:`run`: in all, and pre-training the parties' networks."""
        self._diverged: dict[tuple[str, int], str] = {}
        for party, name in ((student_party, "student_party"), (teacher_party, "teacher_party")):
            if not 0 <= party < num_parties:
                raise ConfigurationError(f"`{name}` must lie in [0, num_parties={num_parties}), got {party!r}.")
        data = self.dataset.data()
        if data.is_text:
            raise ConfigurationError(
                f"`dataset` {type(self.dataset).__name__} holds text, which the study's networks cannot read without "
                "a tokenizer: `kdl study` takes numeric inputs (images, arrays). Distil on text with `kdl fit` or "
                "`kdl tune` and their datamodule's `tokenizers`."
            )
        self.datamodule(self.scenarios[0], self.seeds[0], student_party)  # bad data settings fail now
        for scenario in self.scenarios:  # an impossible scenario fails now, not after hours of others
            scenario.partition(data.train_labels, num_parties, self.seeds[0])
        self.configuration = self._configuration(data.num_classes)

    def _configuration(self, num_classes: int) -> dict[str, Any]:
        """What ``study.json`` records: the settings every run shares and each method's own configuration.

        Every method is built once from fresh networks, so a bad hyperparameter (``temperature: -1``) fails
        here, before any pre-training.
        """
        with torch.random.fork_rng():  # building networks must not move the caller's random state
            student, teacher = self.student(num_classes), self.teacher(num_classes)
            methods: dict[str, Any] = {self.control: {"factory": describe(continue_alone)}}
            control = continue_alone(copy.deepcopy(student), copy.deepcopy(teacher), num_classes)
            for name, factory in self.methods.items():
                try:
                    model = factory(copy.deepcopy(student), copy.deepcopy(teacher), num_classes)
                except ValueError as error:
                    raise ConfigurationError(f"`methods.{name}`: {error}") from error
                check_trainer_for(model, self.trainer, f"methods.{name}")
                if member_error(model, like=control) is None:  # trains as the control does: one fit with it
                    self.members.add(name)
                methods[name] = {
                    "factory": describe(factory),
                    "class": type(model).__name__,
                    "hyperparameters": describe(dict(model.hparams)),
                }
        options = {k: v for k, v in dataclasses.asdict(self.tuning).items() if k not in _UNCHECKED_TUNING}
        for name in self.tuned_names:
            tuning = {**options, "validation": self.validation_of(name)}
            methods[name] = {"class": VanillaKD.__name__, "tuning": describe(tuning)}
        settings = {
            "dataset": {"class_path": describe(type(self.dataset)), "init_args": describe(vars(self.dataset))},
            "student": {"factory": describe(self.student), "network": digest(repr(student))},
            "teacher": {"factory": describe(self.teacher), "network": digest(repr(teacher))},
            **{
                name: getattr(self, name)
                for name in ("num_parties", "student_party", "teacher_party", "pretrain_epochs", "epochs")
            },
            **{name: getattr(self, name) for name in ("batch_size", "val_fraction", "control")},
            **({"public_fraction": self.public_fraction} if self.public_fraction else {}),
            **({"trainer": describe(self.trainer)} if self.trainer else {}),
        }
        return json.loads(json.dumps({"settings": settings, "methods": methods}))  # as read back from the file

    # ------------------------------------------------------------------ pieces
    def datamodule(self, scenario: Partitioner, seed: int, party: int) -> PartitionedDataModule:
        """Party ``party``'s view of ``scenario`` with ``seed`` (its own data is its transfer set)."""
        return PartitionedDataModule(
            dataset=self.dataset,
            partitioner=scenario,
            num_parties=self.num_parties,
            partition_id=party,
            teacher_partition_id=self.teacher_party if party != self.teacher_party else self.student_party,
            public_fraction=self.public_fraction,
            val_fraction=self.val_fraction,
            batch_size=self.batch_size,
            seed=seed,
        )

    def runs(self) -> list[tuple[str, int, str]]:
        """Every ``(scenario, seed, method)`` of the study, in the order they run."""
        names = [self.control, *self.methods, *self.tuned_names]
        return [(str(s), seed, name) for s in self.scenarios for seed in self.seeds for name in names]

    def _key(self, scenario: Partitioner, seed: int, *parts: Any) -> str:
        """A digest of the study's configuration for ``scenario`` and ``seed``, and ``parts``."""
        return digest(
            repr(type(self.dataset)),
            vars(self.dataset),
            str(scenario),
            seed,
            self.num_parties,
            self.val_fraction,
            self.batch_size,
            self.pretrain_epochs,
            *([self.public_fraction] if self.public_fraction else []),
            *parts,
        )

    def _trainer(self, max_epochs: int, callbacks: Sequence[L.Callback] = (), **defaults: Any) -> L.Trainer:
        """A quiet trainer with the study's ``trainer`` settings (over the pipeline's ``defaults``)."""
        return trainer(max_epochs, callbacks, self.trainer, **defaults)

    def test_accuracy(self, model: DistillationModule, data: PartitionedDataModule) -> float:
        """The student's accuracy on the global test set."""
        return float(self._trainer(1).test(model, datamodule=data, verbose=False)[0]["test/acc"])

    def _start(self, scenario: Partitioner, seed: int) -> tuple[PartitionedDataModule, nn.Module, nn.Module, float]:
        """The student's data, both pre-trained networks and the student's test accuracy before any method."""
        data = self.datamodule(scenario, seed, self.student_party)
        key = (str(scenario), seed)
        if key in self._diverged:  # every method of this cell starts from the pre-training that diverged
            raise DivergedError(self._diverged[key])
        try:
            student = self.pretrained("student", scenario, seed)
            teacher = self.pretrained("teacher", scenario, seed)
        except FloatingPointError as error:
            self._diverged[key] = str(error)
            raise
        if key not in self._before:
            self._before[key] = self.test_accuracy(StudentOnly(copy.deepcopy(student), data.num_classes), data)
        return data, student, teacher, self._before[key]

    def _row(self, scenario: Partitioner, seed: int, name: str, **values: Any) -> dict[str, Any]:
        return {"scenario": str(scenario), "seed": seed, "method": name, **values, "epochs": self.epochs}

    def run_recorded(self, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        """:meth:`run_method`, with a diverging run recorded as a failed row (as tuned KD's search records a trial).

        A failed row has the error's first line under ``error`` and no ``acc_after``; any other error propagates,
        with a note naming the run.
        """
        try:
            return self.run_method(name, scenario, seed)
        except FloatingPointError as error:
            method = self.configuration["methods"].get(name, {})
            return self._row(
                scenario,
                seed,
                name,
                **{"class": method.get("class", "")},
                acc_before=self._before.get((str(scenario), seed), ""),
                acc_after="",
                hyperparameters=json.dumps(method.get("hyperparameters", {}), sort_keys=True),
                error=f"{type(error).__name__}: {error_line(error)}",
            )
        except BaseException as error:
            error.add_note(f"in the run of `kdl study` for scenario {scenario}, seed {seed}, method {name!r}")
            raise

    def run_method(self, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        """Run one method, the control or tuned KD from the pre-trained student; return its results row."""
        runners: dict[str, Callable[[str, Partitioner, int], dict[str, Any]]] = {
            self.control: functools.partial(self._fit, continue_alone),
            **{method: functools.partial(self._fit, factory) for method, factory in self.methods.items()},
            **dict.fromkeys(self.tuned_names, self.run_tuned_kd),
        }
        return runners[name](name, scenario, seed)

    def _factory(self, name: str) -> MethodFactory:
        return continue_alone if name == self.control else self.methods[name]

    @staticmethod
    def _build(factory: MethodFactory, student: nn.Module, teacher: nn.Module, num_classes: int, seed: int) -> Any:
        """A method from fresh copies of the pre-trained networks, seeded as every run of its cell."""
        L.seed_everything(seed, verbose=False)
        return factory(copy.deepcopy(student), copy.deepcopy(teacher), num_classes)

    def _cache(self) -> CacheReferenceOutputs:
        return CacheReferenceOutputs(cache_dir=str(self.out / "cache"))

    def _fit(self, factory: MethodFactory, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        data, student, teacher, before = self._start(scenario, seed)
        model = self._build(factory, student, teacher, data.num_classes, seed)
        start = time.perf_counter()
        # no validation: a run is judged by its test accuracy after the last epoch, and nothing reads it
        # (unless a scheduler steps on a validation metric)
        unread = {"limit_val_batches": 0} if getattr(model, "lr_scheduler", None) is None else {}
        self._trainer(self.epochs, [self._cache()], **unread).fit(model, datamodule=data)
        seconds = time.perf_counter() - start
        return self._row(
            scenario,
            seed,
            name,
            **{"class": type(model).__name__},
            acc_before=before,
            acc_after=self.test_accuracy(model, data),
            hyperparameters=json.dumps(dict(model.hparams), sort_keys=True, default=str),
            seconds=round(seconds, 2),
        )

    def check_resume(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Refuse to add runs to ``rows`` (``results.csv``) of another configuration; record this one in ``study.json``.

        See :func:`~kdlightning.study.record.check_and_record`.

        Raises:
            ValueError: naming each difference and what to do, before any training.
        """
        names = {**dict.fromkeys(self.tuned_names, "tuning"), self.control: "control"}
        check_and_record(self.out, rows, self.configuration, names, list(self.methods))

    # ------------------------------------------------------------------ the pipeline
    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        """Run every missing ``(scenario, seed, method)``; rewrite ``results.csv`` and ``summary.md`` after each."""
        self.seconds = {"pretraining": 0.0, "total": 0.0}
        start = time.perf_counter()
        try:
            with quiet():
                return self._run(progress)
        finally:
            self.seconds["total"] = time.perf_counter() - start

    def _run(self, progress: bool) -> list[dict[str, Any]]:
        check_writable(self.out, "out")
        rows: list[dict[str, Any]] = read_csv(self.out / "results.csv")
        self.check_resume(rows)
        done = {(row["scenario"], int(row["seed"]), row["method"]) for row in rows}
        todo = [run for run in self.runs() if run not in done]
        scenarios = {str(s): s for s in self.scenarios}
        cells: list[Cell] = [
            (scenarios[scenario], seed, [method for s, sd, method in todo if (s, sd) == (scenario, seed)])
            for scenario, seed in dict.fromkeys((scenario, seed) for scenario, seed, _ in todo)
        ]
        fits = {method: self.fits(method) for method in {run[2] for run in self.runs()}}
        total, left = sum(fits[run[2]] for run in self.runs()), sum(fits[run[2]] for run in todo)
        bar = progress_bar(total, "fit", enabled=progress, initial=total - left)
        number = len(self.runs()) - len(todo)

        def starting(scenario: Partitioner, seed: int, step: list[str], together: bool) -> None:
            nonlocal number
            number += len(step)
            what = f"{len(step)} methods as batched members" if together else step[0]
            bar.set_description(f"run {number}/{len(self.runs())}: {scenario} seed {seed} {what}")

        def finished(step_rows: list[dict[str, Any]]) -> None:
            rows.extend(step_rows)
            self.save(rows)
            bar.update(sum(fits[row["method"]] for row in step_rows))
            raise_if_stopped()  # a stop signal swallowed during the step ends the study here

        self.pretrain_cells([(scenario, seed) for scenario, seed, _ in cells])
        if self.ray is False:
            for scenario, seed, names in cells:
                self.run_missing(scenario, seed, names, starting, finished)
        else:
            rows = run_cells(self, cells, rows, bar)
        bar.close()
        if not todo and rows:  # a finished study: refresh the summary and guidance from the results
            self.save(rows)
        if rows:
            self.plot(rows)
        return add_gains(rows, control=self.control)

    def run_missing(
        self,
        scenario: Partitioner,
        seed: int,
        names: Sequence[str],
        starting: Callable[[Partitioner, int, list[str], bool], None] | None = None,
        finished: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run the runs ``names`` of one cell (``scenario`` and ``seed``); return their rows.

        The runs that train together (:meth:`batched_runs`) are one step, run first; each other run is a step of
        its own. A step calls ``starting(scenario, seed, step, together)`` before it and ``finished(its rows)``
        after: the sequential study writes its files there, a Ray task (``kdlightning.study.parallel``) waits
        for the cell's rows.
        """
        together = self.batched_runs(names)
        steps = [together] if together else []
        steps += [[name] for name in names if name not in together]
        rows: list[dict[str, Any]] = []
        for step in steps:
            if starting is not None:
                starting(scenario, seed, step, step is together)
            if step is together:
                step_rows = self.run_cell(scenario, seed, step)
            else:
                step_rows = [self.run_recorded(step[0], scenario, seed)]
            if finished is not None:
                finished(step_rows)
            rows += step_rows
        return rows

    def batched_runs(self, names: Sequence[str]) -> list[str]:
        """Which of a cell's runs ``names`` train together as batched members (none unless ``batched``)."""
        if not self.batched:
            return []
        grid = self.tuning.sampler == "grid"
        return [name for name in names if name in self.members or (name in self.tuned_names and grid)]

    def fits(self, method: str) -> int:
        """How many fits the run of ``method`` is: the progress bar's weight of it (tuned KD: one per trial).

        Examples:
            >>> from kdlightning.tuning import TuneOptions
            >>> study = object.__new__(Study)
            >>> study.tuning = TuneOptions()  # the 5 x 5 grid
            >>> study.fits("tuned_kd"), study.fits("vanilla_kd")
            (25, 1)
        """
        if method not in TUNED_NAMES.values():
            return 1
        if self.tuning.sampler == "grid":
            return math.prod(len(param.values or ()) for param in check_space(self.tuning, VanillaKD).values())
        return self.tuning.n_trials


def _check_unique(name: str, values: Sequence[Any], why: str) -> None:
    """Raise ``ValueError`` naming the argument ``name`` and its repeated values, if any."""
    repeated = [value for value, count in Counter(values).items() if count > 1]
    if repeated:
        raise ConfigurationError(f"`{name}` repeats {repeated}: give each once ({why}).")


def continue_alone(student: nn.Module, teacher: nn.Module, num_classes: int) -> DistillationModule:
    """The control: the student continues alone (the teacher is not used)."""
    return StudentOnly(student, num_classes)
