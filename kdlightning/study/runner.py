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
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from kdlightning.data import DatasetSource, Digits, Partitioner
from kdlightning.errors import ConfigurationError
from kdlightning.hf import check_readable
from kdlightning.interrupt import raise_if_stopped
from kdlightning.methods import DistillationModule, StudentOnly, VanillaKD, member_error
from kdlightning.pipeline import NetworkFactory, check_trainer, check_trainer_for, check_writable, describe, digest
from kdlightning.reporting import add_gains, read_csv
from kdlightning.study.cells import CellRunner
from kdlightning.study.config import (
    TUNED_KD,
    TUNED_PREFIX,
    MethodFactory,
    StudyConfig,
    default_scenarios,
    tokenizers_by_network,
)
from kdlightning.study.logged import StudyRuns
from kdlightning.study.parallel import CellRuns, check_ray, run_cells
from kdlightning.study.pretraining import Pretraining
from kdlightning.study.progress import StudyProgress
from kdlightning.study.record import check_and_record
from kdlightning.study.report import StudyReport
from kdlightning.study.steps import plan
from kdlightning.tracking import check_logger
from kdlightning.tuning import TuneOptions
from kdlightning.tuning.options import check_space
from kdlightning.tuning.quiet import quiet

__all__ = ["TUNED_KD", "MethodFactory", "NetworkFactory", "Study", "continue_alone", "default_scenarios"]

_UNCHECKED_TUNING = ("storage", "study_name", "heartbeat_interval", "logger", "test", "batched", "max_members")
"""Tuning options that do not change a search's result (where it is stored, how it logs, how it batches)."""


class Study:
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
            "bf16-mixed"}``); the study sets the epochs, one device and its logger (``logger``) itself.
        tokenizers: on a text data set, how its networks read it: one tokenizer for both, or a dict with the
            ``student``'s and the ``teacher``'s (DML's peer, a copy of the teacher, reads the teacher's). Every
            datamodule of the study tokenizes with them: each party's pre-training with its network's, every
            method, the control and tuned KD's search with both. Load one with
            :func:`kdlightning.hf.load_tokenizer` (in YAML ``class_path: kdlightning.hf.load_tokenizer``).
        max_length: with ``tokenizers``: truncate each text to this many tokens (None: the tokenizer's maximum).
        optimizer: the optimizer of every fit of the study: each party's pre-training, the control, every method
            (it replaces a method's own, DML's peer's included: the methods compare under one optimizer) and tuned
            KD's points, e.g. ``functools.partial(torch.optim.AdamW, lr=5e-5)`` to fine-tune pre-trained
            transformers (in YAML ``class_path: torch.optim.AdamW`` with ``init_args: {lr: 5.0e-5}``). None: each
            method's own (Adam, lr 1e-3, by default). Recorded in ``study.json``; the pre-trained files key by it.
        batched: train each cell's (scenario and seed's) control, the methods that can be members
            (:func:`~kdlightning.methods.member_error`) and tuned KD's grid as batched members
            (:class:`~kdlightning.methods.BatchedMembers`): one fit where they would be dozens, each member as
            its own fit would train it (DML as a student-peer pair). Other methods are fitted apart. False fits every
            run apart.
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
        tuned: methods (keys of ``methods``) to tune besides tuned KD, e.g. ``["dpkd", "dml"]``: each searched
            over ``tuning``'s space (its float arguments, e.g. temperature and alpha; the method's other arguments
            as given), validated as ``tuning.validation`` says, in the rows ``tuned_<method>`` (own split) and
            ``tuned_<method>_public``. A method that trains as a batched member has its grid trained as batched
            members too; the others' points are fitted one at a time. Their searches' files go to
            ``<out>/tuning/<method>/<scenario>-seed<seed>[-public]/``.
        teacher_pretrain_epochs: the teacher party's pre-training epochs, if not ``pretrain_epochs``: fewer make
            a weaker teacher (with the same architecture), so a study run for several values sweeps the teacher's
            strength relative to the student; ``summary.md`` sets the teacher's lead over the student beside what
            tuning gains. Recorded in ``study.json``; the teacher's pre-trained files key by it.
        logger: log the study to Weights & Biases: false (the default), true, or a dict of
            ``lightning.pytorch.loggers.WandbLogger`` arguments (``project``, ``group``, ``mode``, ``save_dir``, ...).
            Each run (each row of ``results.csv``, a batched member included) is a W&B run of its own, named
            ``<scenario>/seed<seed>/<method>`` and grouped by the study (``out``'s name unless ``group`` is given),
            with its validation per epoch, its best validation accuracy and its test accuracy and gain; a last run,
            ``summary``, holds the study's tables and plots (:mod:`kdlightning.study.logged`). Runs go under
            ``out`` unless ``save_dir`` is given. Not recorded in ``study.json``: it changes no result.

    The constructor checks the arguments' values; :meth:`check` (which :meth:`run` calls first) reads the data
    set, partitions it for every scenario and builds every method once, so that a bad scenario or hyperparameter
    fails before any training.

    Attributes:
        config: the checked settings (:class:`~kdlightning.study.config.StudyConfig`), shared by the study's parts.
        pretraining: the parties' pre-trained networks (:class:`~kdlightning.study.pretraining.Pretraining`).
        report: what the study writes from its rows (:class:`~kdlightning.study.report.StudyReport`).
        seconds: wall time of the last :meth:`run`: in all, and pre-training the parties' networks.

    Raises:
        ConfigurationError: a bad argument: duplicate seeds or scenarios, a party out of range, epochs below 1,
            ``tokenizers`` that name other networks; ``tuned`` naming no method of ``methods``. A tuned method
            whose float arguments the ``tuning`` space does not name is refused by :meth:`check`, naming ``tuned``.
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
        tokenizers: Any = None,
        max_length: int | None = 128,
        optimizer: OptimizerCallable | None = None,
        batched: bool = True,
        max_members: int | None = 32,
        ray: bool | str = False,
        cpus_per_cell: float = 1.0,
        gpus_per_cell: float = 0.0,
        tuned: Sequence[str] = (),
        teacher_pretrain_epochs: int | None = None,
        logger: bool | dict[str, Any] = False,
    ) -> None:
        if not methods and not tuned_kd:
            raise ConfigurationError("`methods` is empty and `tuned_kd` is off: name at least one method to compare.")
        if control in methods:
            raise ConfigurationError(f"`methods` must not use the name {control!r}: it is the control's.")
        for name in methods:
            if name.startswith(TUNED_PREFIX):
                raise ConfigurationError(
                    f"`methods` must not use the name {name!r}: names starting {TUNED_PREFIX!r} are the tuned runs'."
                )
        _check_unique("tuned", list(tuned), "each method is tuned once")
        unknown = [name for name in tuned if name not in methods]
        if unknown:
            raise ConfigurationError(
                f"`tuned` names {unknown}, which are not methods of the study: choose among {sorted(methods)}."
            )
        if not seeds:
            raise ConfigurationError("`seeds` is empty: give at least one seed.")
        _check_unique("seeds", list(seeds), "each seed is one sample of every run")
        if student_party == teacher_party:
            raise ConfigurationError(f"`student_party` and `teacher_party` must differ, both are {student_party}.")
        epochs_given: dict[str, int | None] = {"pretrain_epochs": pretrain_epochs, "epochs": epochs}
        epochs_given["teacher_pretrain_epochs"] = teacher_pretrain_epochs  # None: the student's
        for name, value in epochs_given.items():
            if value is not None and value < 1:
                raise ConfigurationError(f"`{name}` must be >= 1, got {value!r}.")
        for party, name in ((student_party, "student_party"), (teacher_party, "teacher_party")):
            if not 0 <= party < num_parties:
                raise ConfigurationError(f"`{name}` must lie in [0, num_parties={num_parties}), got {party!r}.")
        tuning = tuning if tuning is not None else TuneOptions()
        if tuned_kd:
            check_space(tuning, VanillaKD, section="tuning")  # a bad search space fails now
        if not 0.0 < public_fraction < 1.0:
            raise ConfigurationError(f"`public_fraction` must lie in (0, 1), got {public_fraction!r}.")
        if max_members is not None and max_members < 1:
            raise ConfigurationError(f"`max_members` must be >= 1 (or None for no limit), got {max_members!r}.")
        scenarios = scenarios if scenarios is not None else default_scenarios()
        _check_unique("scenarios", [str(s) for s in scenarios], "results name a scenario by this text")
        settings = check_trainer(trainer)
        check_ray(ray, cpus_per_cell, gpus_per_cell, settings)
        self.config = StudyConfig(
            student=student,
            teacher=teacher,
            methods=dict(methods),
            tuned_kd=tuned_kd,
            tuning=tuning,
            dataset=dataset if dataset is not None else Digits(),
            scenarios=tuple(scenarios),
            seeds=tuple(seeds),
            num_parties=num_parties,
            student_party=student_party,
            teacher_party=teacher_party,
            pretrain_epochs=pretrain_epochs,
            epochs=epochs,
            batch_size=batch_size,
            val_fraction=val_fraction,
            public_fraction=public_fraction if "public" in tuning.validations and (tuned_kd or tuned) else 0.0,
            control=control,
            control_factory=continue_alone,
            out=Path(out),
            trainer=settings,
            tokenizers=tokenizers_by_network(tokenizers),
            max_length=max_length,
            optimizer=optimizer,
            batched=batched,
            max_members=max_members,
            ray=ray,
            cpus_per_cell=cpus_per_cell,
            gpus_per_cell=gpus_per_cell,
            tuned=tuple(tuned),
            teacher_pretrain_epochs=teacher_pretrain_epochs,
            logger=check_logger(logger),
        )
        self.config.datamodule(self.config.scenarios[0], self.config.seeds[0], student_party)  # its own checks
        self.pretraining = Pretraining(self.config)
        self.report = StudyReport(self.config)
        self.seconds: dict[str, float] = {"pretraining": 0.0, "total": 0.0}
        self._checked: _Checked | None = None

    # ------------------------------------------------------------------ the expensive checks, once
    def check(self) -> None:
        """Check what the arguments alone cannot tell: the data set, every scenario's partition, every method.

        Reads the data set, partitions it for every scenario, and builds every method once from fresh networks
        (so a bad hyperparameter, or a trainer setting a method cannot train with, fails now); records what
        ``study.json`` will hold. :meth:`run` calls it first; the command line before it prints anything.

        Raises:
            ConfigurationError: naming the argument, before any training and before anything is written.
        """
        if self._checked is not None:
            return
        config = self.config
        data = config.dataset.data()
        if data.is_text and config.tokenizers is None:
            raise ConfigurationError(
                f"`dataset` {type(config.dataset).__name__} holds text, which the study's networks read as token "
                "ids: give `tokenizers`, one tokenizer for both networks or `{student: ..., teacher: ...}` (in YAML "
                "`class_path: kdlightning.hf.load_tokenizer` with `init_args: {path: <model directory>}`)."
            )
        if not data.is_text and config.tokenizers is not None:
            raise ConfigurationError(
                f"`tokenizers` is set but `dataset` {type(config.dataset).__name__} holds numeric inputs, not text: "
                "drop `tokenizers`, or choose a text column of the data set."
            )
        for scenario in config.scenarios:  # an impossible scenario fails now, not after hours of others
            scenario.partition_data(data, np.arange(len(data.train_labels)), config.num_parties, config.seeds[0])
        self._checked = self._configuration(data.num_classes)

    @property
    def configuration(self) -> dict[str, Any]:
        """What ``<out>/study.json`` records and a resume must match (after :meth:`check`).

        ``settings`` shared by every run, and each method's own configuration under ``methods``.
        """
        self.check()
        assert self._checked is not None
        return self._checked.configuration

    def _configuration(self, num_classes: int) -> _Checked:
        """What ``study.json`` records, and which methods train as batched members (each method built once)."""
        config = self.config
        members = {config.control}
        with torch.random.fork_rng():  # building networks must not move the caller's random state
            student, teacher = config.student(num_classes), config.teacher(num_classes)
            if config.tokenizers is not None:
                for name, network in (("student", student), ("teacher", teacher)):
                    check_readable(network, config.tokenizers[name], config.max_length, name)
            methods: dict[str, Any] = {config.control: {"factory": describe(continue_alone)}}
            control = config.optimized(continue_alone(copy.deepcopy(student), copy.deepcopy(teacher), num_classes))
            built: dict[str, type[DistillationModule]] = {}
            for name, factory in config.methods.items():
                try:
                    model = config.optimized(factory(copy.deepcopy(student), copy.deepcopy(teacher), num_classes))
                except ValueError as error:
                    raise ConfigurationError(f"`methods.{name}`: {error}") from error
                check_trainer_for(model, config.trainer, f"methods.{name}")
                if member_error(model, like=control) is None:  # trains as the control does: one fit with it
                    members.add(name)
                built[name] = type(model)
                methods[name] = {
                    "factory": describe(factory),
                    "class": type(model).__name__,
                    "hyperparameters": describe(dict(model.hparams)),
                }
        classes = {name: self._tunable(name, built[name], student, teacher, num_classes) for name in config.tuned}
        options = {k: v for k, v in dataclasses.asdict(config.tuning).items() if k not in _UNCHECKED_TUNING}
        for name, run in config.tuned_runs.items():
            tuning = {**options, "validation": run.validation}
            kind = VanillaKD if run.method is None else classes[run.method]
            tuned = {"method": run.method} if run.method is not None else {}
            methods[name] = {"class": kind.__name__, **tuned, "tuning": describe(tuning)}
        settings = {
            "dataset": {"class_path": describe(type(config.dataset)), "init_args": describe(vars(config.dataset))},
            "student": {"factory": describe(config.student), "network": digest(repr(student))},
            "teacher": {"factory": describe(config.teacher), "network": digest(repr(teacher))},
            **{
                name: getattr(config, name)
                for name in ("num_parties", "student_party", "teacher_party", "pretrain_epochs", "epochs")
            },
            **{name: getattr(config, name) for name in ("batch_size", "val_fraction", "control")},
            **({"public_fraction": config.public_fraction} if config.public_fraction else {}),
            **({"trainer": describe(dict(config.trainer))} if config.trainer else {}),
            **({"tokenizers": collate.fingerprint()} if (collate := config.collate()) is not None else {}),
            **({"optimizer": describe(config.optimizer)} if config.optimizer is not None else {}),
            **dict(config.teacher_parts),
        }
        configuration = json.loads(json.dumps({"settings": settings, "methods": methods}))  # as read from the file
        return _Checked(configuration, frozenset(members), classes)

    def _tunable(
        self, name: str, kind: type[DistillationModule], student: nn.Module, teacher: nn.Module, num_classes: int
    ) -> type[DistillationModule]:
        """Tuned method ``name``'s class, once the ``tuning`` space is shown to be its float arguments.

        Raises:
            ConfigurationError: a space naming an argument the method lacks (or a method without float arguments),
                or a factory that does not take the searched values as keyword arguments; naming ``tuned``.
        """
        config = self.config
        try:
            space = check_space(config.tuning, kind, section="tuning")
        except ConfigurationError as error:
            raise ConfigurationError(f"`tuned` lists {name!r}, which cannot be searched: {error}") from error
        first = {key.rsplit(".", 1)[-1]: param.values[0] if param.values else param.low for key, param in space.items()}
        try:
            config.methods[name](copy.deepcopy(student), copy.deepcopy(teacher), num_classes, **first)
        except TypeError as error:
            raise ConfigurationError(
                f"`tuned` lists {name!r}, whose factory does not take the searched values {sorted(first)} as keyword "
                f"arguments ({error}): give it as a class (in YAML `class_path`) or a `functools.partial` of one."
            ) from error
        return kind

    def cells(self) -> CellRunner:
        """The runner of the study's cells (after :meth:`check`)."""
        self.check()
        assert self._checked is not None
        described = self._checked.configuration["methods"]
        return CellRunner(self.config, self.pretraining, self._checked.members, described, self._checked.classes)

    def runs(self) -> list[tuple[str, int, str]]:
        """Every ``(scenario, seed, method)`` of the study, in the order they run."""
        return self.config.runs()

    @property
    def out(self) -> Path:
        """The study's directory."""
        return self.config.out

    def check_resume(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Refuse to add runs to ``rows`` (``results.csv``) of another configuration; record this one in ``study.json``.

        See :func:`~kdlightning.study.record.check_and_record`.

        Raises:
            ConfigurationError: naming each difference and what to do, before any training.
        """
        names = {**dict.fromkeys(self.config.tuned_names, "tuning"), self.config.control: "control"}
        check_and_record(self.config.out, rows, self.configuration, names, list(self.config.methods))

    # ------------------------------------------------------------------ the pipeline
    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        """Run every missing ``(scenario, seed, method)``; rewrite ``results.csv`` and ``summary.md`` after each."""
        self.seconds = {"pretraining": 0.0, "total": 0.0}
        self.pretraining.seconds = 0.0
        start = time.perf_counter()
        try:
            with quiet():  # Lightning's notices and Optuna's per-search lines, which would break the progress bar
                return self._run(progress)
        finally:
            self.seconds["pretraining"] += self.pretraining.seconds
            self.seconds["total"] = time.perf_counter() - start

    def _run(self, progress: bool) -> list[dict[str, Any]]:
        self.check()
        config = self.config
        check_writable(config.out, "out")
        rows: list[dict[str, Any]] = read_csv(config.out / "results.csv")
        self.check_resume(rows)
        done = {(row["scenario"], int(row["seed"]), row["method"]) for row in rows}
        runs = config.runs()
        todo = [run for run in runs if run not in done]
        scenarios = {str(s): s for s in config.scenarios}
        cells: list[CellRuns] = [
            (scenarios[scenario], seed, [method for s, sd, method in todo if (s, sd) == (scenario, seed)])
            for scenario, seed in dict.fromkeys((scenario, seed) for scenario, seed, _ in todo)
        ]
        runner = self.cells()
        steps = plan(config, self.pretraining, runner, cells)
        bar = StudyProgress(steps, enabled=progress, runs=len(runs), finished=len(runs) - len(todo))
        step: tuple[Any, ...] = ()

        def starting(scenario: Partitioner, seed: int, names: list[str], together: bool) -> None:
            nonlocal step
            step = (str(scenario), seed, tuple(names))
            bar.start(step)

        def finished(step_rows: list[dict[str, Any]]) -> None:
            rows.extend(step_rows)
            self.report.save(rows)
            bar.finish(step)
            raise_if_stopped()  # a stop signal swallowed during the step ends the study here

        self.pretraining.pretrain_cells([(scenario, seed) for scenario, seed, _ in cells], bar)
        if config.ray is False:
            for scenario, seed, names in cells:
                self.pretraining.pretrain_cell(scenario, seed, bar)
                runner.run_missing(scenario, seed, names, starting, finished)
        else:
            rows, seconds = run_cells(config, runner, cells, rows, bar, self.report.save)
            self.seconds["pretraining"] += seconds
        bar.close()
        if not todo and rows:  # a finished study: refresh the summary and guidance from the results
            self.report.save(rows)
        if rows:
            self.report.plot(rows)
            if todo:  # a study that trained something: its summary as one W&B run (with `logger`)
                StudyRuns(config).log_summary()
        return add_gains(rows, control=config.control)


@dataclass(frozen=True)
class _Checked:
    """What :meth:`Study.check` found: ``study.json``'s configuration, and the methods that train as members."""

    configuration: dict[str, Any]
    members: frozenset[str]
    classes: Mapping[str, type[DistillationModule]]
    """Each tuned method's class."""


def continue_alone(student: nn.Module, teacher: nn.Module, num_classes: int) -> DistillationModule:
    """The control: the student continues alone (the teacher is not used)."""
    return StudentOnly(student, num_classes)


def _check_unique(name: str, values: Sequence[Any], why: str) -> None:
    """Raise ``ConfigurationError`` naming the argument ``name`` and its repeated values, if any."""
    repeated = [value for value, count in Counter(values).items() if count > 1]
    if repeated:
        raise ConfigurationError(f"`{name}` repeats {repeated}: give each once ({why}).")
