"""The study pipeline behind ``kdl study``: every method, every scenario, every seed, from the same start.

For each scenario (a partitioner) and seed it partitions the training pool, pre-trains the
teacher's and the student's models on their own parties with :class:`~kdlightning.StudentOnly`
(cached by configuration), measures the student's test accuracy before, runs every method from
that same pre-trained student beside a control that continues the student alone for as many
epochs, and records each run in ``results.csv``. ``summary.md`` is recomputed from ``results.csv``
after every run (:mod:`kdlightning.reporting`), and both are written atomically: a killed study
loses no finished run and resumes where it stopped.

``study.json`` beside ``results.csv`` records the configuration the results were made with (the
settings every run shares, and each method's own); a resume of another configuration is refused
before any training, while new seeds, scenarios and methods only add their runs. A run that diverges
(``FloatingPointError``) is recorded as a failed row with its error, and the study goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import nn

from kdlightning.atomic import atomic_path, write_text_atomic
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import (
    DatasetSource,
    Digits,
    DirichletPartitioner,
    IIDPartitioner,
    LabelSkewPartitioner,
    PartitionedDataModule,
    Partitioner,
    load_once,
)
from kdlightning.interrupt import exit_on_signals
from kdlightning.methods import DistillationModule, StudentOnly, VanillaKD
from kdlightning.reporting import add_gains, is_failed, plot_gains, read_csv, render_summary, write_csv
from kdlightning.trainers import quiet, quiet_trainer
from kdlightning.tuning import Search, TrialBuilder, TuneOptions, _check_space

__all__ = ["TUNED_KD", "MethodFactory", "NetworkFactory", "Study", "default_scenarios"]

TUNED_KD = "tuned_kd"
"""The name of tuned KD in a study's results: :class:`~kdlightning.VanillaKD` with the values a search chose."""

NetworkFactory = Callable[[int], nn.Module]
"""Builds a fresh network for ``num_classes`` classes (in YAML: a ``class_path`` with ``init_args``)."""

MethodFactory = Callable[[nn.Module, nn.Module, int], DistillationModule]
"""Builds a method from ``(student, other network, num_classes)``: the other is the teacher (frozen by the
method) or DML's peer (trained), always a fresh copy of the teacher party's pre-trained model."""

RECORD = "study.json"
"""The file beside ``results.csv`` that records the configuration its results were made with."""

_UNCHECKED_TUNING = ("storage", "study_name", "heartbeat_interval", "logger", "test")
"""Tuning options that do not change a search's result (where it is stored, how it logs): not recorded."""


def default_scenarios() -> list[Partitioner]:
    """IID; Dirichlet alpha 1.0, 0.5, 0.1; label skew with 2 classes per party."""
    return [
        IIDPartitioner(),
        DirichletPartitioner(alpha=1.0),
        DirichletPartitioner(alpha=0.5),
        DirichletPartitioner(alpha=0.1),
        LabelSkewPartitioner(classes_per_party=2),
    ]


class Study:
    """The study of SPEC §6 as one object: configure it, then :meth:`run` it.

    Args:
        student: builds the student party's network.
        teacher: builds the teacher party's network.
        methods: the methods to compare, by name; each is called with ``(student, teacher copy, num_classes)``.
        tuned_kd: also run tuned KD (``"tuned_kd"``): per scenario and seed, a search (:mod:`kdlightning.tuning`)
            of :class:`~kdlightning.VanillaKD`'s values on the student's validation split, then the chosen
            point's test accuracy.
        tuning: the search of tuned KD (default: the SPEC grid, temperature {1, 2, 4, 8, 16} × alpha
            {0.1, 0.25, 0.5, 0.75, 0.9}); its files go to ``<out>/tuning/<scenario>-seed<seed>/``.
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
        control: name of the control run (the student alone, same epochs and data).
        out: directory of ``results.csv``, ``summary.md``, the pre-trained checkpoints and the cache.

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
        control: str = "student_only",
        out: str = "runs/study",
    ) -> None:
        if not methods and not tuned_kd:
            raise ValueError("`methods` is empty and `tuned_kd` is off: name at least one method to compare.")
        for reserved, role in ((control, "the control"), (TUNED_KD, "tuned KD")):
            if reserved in methods:
                raise ValueError(f"`methods` must not use the name {reserved!r}: it is {role}'s.")
        if not seeds:
            raise ValueError("`seeds` is empty: give at least one seed.")
        _check_unique("seeds", list(seeds), "each seed is one sample of every run")
        if student_party == teacher_party:
            raise ValueError(f"`student_party` and `teacher_party` must differ, both are {student_party}.")
        for name, value in (("pretrain_epochs", pretrain_epochs), ("epochs", epochs)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value!r}.")
        self.student, self.teacher, self.methods = student, teacher, dict(methods)
        self.tuned_kd, self.tuning = tuned_kd, tuning if tuning is not None else TuneOptions()
        if tuned_kd:
            _check_space(self.tuning, VanillaKD)  # a bad search space fails now
        self.dataset = dataset if dataset is not None else Digits()
        self.scenarios = scenarios if scenarios is not None else default_scenarios()
        _check_unique("scenarios", [str(s) for s in self.scenarios], "results name a scenario by this text")
        self.seeds = list(seeds)
        self.num_parties, self.student_party, self.teacher_party = num_parties, student_party, teacher_party
        self.pretrain_epochs, self.epochs = pretrain_epochs, epochs
        self.batch_size, self.val_fraction, self.control = batch_size, val_fraction, control
        self.out = Path(out)
        self._before: dict[tuple[str, int], float] = {}
        self._diverged: dict[tuple[str, int], str] = {}
        for party, name in ((student_party, "student_party"), (teacher_party, "teacher_party")):
            if not 0 <= party < num_parties:
                raise ValueError(f"`{name}` must lie in [0, num_parties={num_parties}), got {party!r}.")
        data = load_once(self.dataset)
        for scenario in self.scenarios:  # an impossible scenario fails now, not after hours of others
            scenario.partition(data.train_labels, num_parties, self.seeds[0])
        self.configuration = self._configuration(data.num_classes)

    def _configuration(self, num_classes: int) -> dict[str, Any]:
        """What ``study.json`` records: the settings every run shares and each method's own configuration.

        Every method is built once from fresh networks, so a bad hyperparameter (``temperature: -1``) fails
        here, before any pre-training (SPEC §9).
        """
        with torch.random.fork_rng():  # building networks must not move the caller's random state
            student, teacher = self.student(num_classes), self.teacher(num_classes)
            methods: dict[str, Any] = {self.control: {"factory": _describe(continue_alone)}}
            for name, factory in self.methods.items():
                try:
                    model = factory(copy.deepcopy(student), copy.deepcopy(teacher), num_classes)
                except ValueError as error:
                    raise ValueError(f"`methods.{name}`: {error}") from error
                methods[name] = {
                    "factory": _describe(factory),
                    "class": type(model).__name__,
                    "hyperparameters": _describe(dict(model.hparams)),
                }
        if self.tuned_kd:
            options = {k: v for k, v in dataclasses.asdict(self.tuning).items() if k not in _UNCHECKED_TUNING}
            methods[TUNED_KD] = {"class": VanillaKD.__name__, "tuning": _describe(options)}
        settings = {
            "dataset": {"class_path": _describe(type(self.dataset)), "init_args": _describe(vars(self.dataset))},
            "student": {"factory": _describe(self.student), "network": _digest(repr(student))},
            "teacher": {"factory": _describe(self.teacher), "network": _digest(repr(teacher))},
            **{
                name: getattr(self, name)
                for name in ("num_parties", "student_party", "teacher_party", "pretrain_epochs", "epochs")
            },
            **{name: getattr(self, name) for name in ("batch_size", "val_fraction", "control")},
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
            val_fraction=self.val_fraction,
            batch_size=self.batch_size,
            seed=seed,
            log_partition=False,
        )

    def runs(self) -> list[tuple[str, int, str]]:
        """Every ``(scenario, seed, method)`` of the study, in the order they run."""
        names = [self.control, *self.methods, *([TUNED_KD] if self.tuned_kd else [])]
        return [(str(s), seed, name) for s in self.scenarios for seed in self.seeds for name in names]

    def _key(self, scenario: Partitioner, seed: int, *parts: Any) -> str:
        """A digest of the study's configuration for ``scenario`` and ``seed``, and ``parts``."""
        key = [
            repr(type(self.dataset)),
            vars(self.dataset),
            str(scenario),
            seed,
            self.num_parties,
            self.val_fraction,
            self.batch_size,
            self.pretrain_epochs,
            *parts,
        ]
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]

    def pretrained(self, role: str, scenario: Partitioner, seed: int) -> nn.Module:
        """The ``role`` ("student" or "teacher") party's pre-trained network, trained once per configuration."""
        factory, party = (self.student, self.student_party) if role == "student" else (self.teacher, self.teacher_party)
        data = self.datamodule(scenario, seed, party)
        L.seed_everything(seed, verbose=False)
        network = factory(data.num_classes)
        path = self.out / "pretrained" / f"{role}-{self._key(scenario, seed, party, repr(network))}.pt"
        if path.is_file():
            network.load_state_dict(torch.load(path, weights_only=True))
            return network
        try:
            quiet_trainer(self.pretrain_epochs).fit(StudentOnly(network, data.num_classes), datamodule=data)
        except FloatingPointError as error:
            raise FloatingPointError(f"the {role} party's pre-training diverged: {error}") from error
        with atomic_path(path) as tmp:
            torch.save(network.state_dict(), tmp)
        return network

    def test_accuracy(self, model: DistillationModule, data: PartitionedDataModule) -> float:
        """The student's accuracy on the global test set."""
        return float(quiet_trainer(1).test(model, datamodule=data, verbose=False)[0]["test/acc"])

    def _start(self, scenario: Partitioner, seed: int) -> tuple[PartitionedDataModule, nn.Module, nn.Module, float]:
        """The student's data, both pre-trained networks and the student's test accuracy before any method."""
        data = self.datamodule(scenario, seed, self.student_party)
        key = (str(scenario), seed)
        if key in self._diverged:  # every method of this cell starts from the pre-training that diverged
            raise FloatingPointError(self._diverged[key])
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
            lines = str(error).strip().splitlines()
            method = self.configuration["methods"].get(name, {})
            return self._row(
                scenario,
                seed,
                name,
                **{"class": method.get("class", "")},
                acc_before=self._before.get((str(scenario), seed), ""),
                acc_after="",
                hyperparameters=json.dumps(method.get("hyperparameters", {}), sort_keys=True),
                error=f"{type(error).__name__}: {lines[0] if lines else ''}",
            )
        except BaseException as error:
            _add_note(error, f"in the run of `kdl study` for scenario {scenario}, seed {seed}, method {name!r}")
            raise

    def run_method(self, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        """Run one method, the control or tuned KD from the pre-trained student; return its results row."""
        runners: dict[str, Callable[[str, Partitioner, int], dict[str, Any]]] = {
            self.control: functools.partial(self._fit, continue_alone),
            **{method: functools.partial(self._fit, factory) for method, factory in self.methods.items()},
            TUNED_KD: self.run_tuned_kd,
        }
        return runners[name](name, scenario, seed)

    def _fit(self, factory: MethodFactory, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        data, student, teacher, before = self._start(scenario, seed)
        L.seed_everything(seed, verbose=False)
        model = factory(copy.deepcopy(student), copy.deepcopy(teacher), data.num_classes)
        cache = CacheReferenceOutputs(cache_dir=str(self.out / "cache"))
        start = time.perf_counter()
        quiet_trainer(self.epochs, [cache]).fit(model, datamodule=data)
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

    def tuning_dir(self, scenario: Partitioner, seed: int) -> Path:
        """Where tuned KD's search for ``scenario`` and ``seed`` keeps its files."""
        return self.out / "tuning" / f"{_slug(str(scenario))}-seed{seed}"

    def _search(
        self, scenario: Partitioner, seed: int, build: TrialBuilder | None = None, description: Any = None
    ) -> Search:
        """Tuned KD's search for ``scenario`` and ``seed`` (``build`` None: one that only reads and draws)."""
        out = self.tuning_dir(scenario, seed)
        options = dataclasses.replace(self.tuning, test=True)  # the study reports the chosen point's test accuracy
        hint = f"Pass another `--out` to `kdl study`, or delete {out} to search this cell again."
        if options.storage is not None:  # one storage, one named search per scenario and seed
            options = dataclasses.replace(options, study_name=f"{options.study_name}-{out.name}")
            hint = (
                "Pass another `--out` or `--tuning.study_name` to `kdl study` "
                f"(this cell's search is {options.study_name!r})."
            )
        return Search(
            build or _unbuilt,
            VanillaKD,
            options,
            out,
            description=description,
            seed=seed,
            cache_dir=self.out / "cache",
            verbose=False,
            conflict_hint=hint,
        )

    def run_tuned_kd(self, name: str, scenario: Partitioner, seed: int) -> dict[str, Any]:
        """Tuned KD: search :class:`~kdlightning.VanillaKD`'s values on the validation split, test the chosen point.

        Every trial starts from the same pre-trained student and reads the teacher's outputs from the
        study's cache; the search resumes from its storage if the study was killed during it.
        """
        data, student, teacher, before = self._start(scenario, seed)

        def build(values: dict[str, float], trial_seed: int, callbacks: Sequence[L.Callback]) -> _Trial:
            trial_data = self.datamodule(scenario, trial_seed, self.student_party)
            L.seed_everything(trial_seed, verbose=False)
            model = VanillaKD(copy.deepcopy(student), copy.deepcopy(teacher), data.num_classes, **values)
            return _Trial(model, trial_data, quiet_trainer(self.epochs, list(callbacks)))

        search = self._search(
            scenario, seed, build, [self._key(scenario, seed, repr(student), repr(teacher)), self.epochs]
        )
        start = time.perf_counter()
        result = search.run()
        seconds = time.perf_counter() - start
        chosen = {key.rsplit(".", 1)[-1]: value for key, value in result.best_params.items()}
        return self._row(
            scenario,
            seed,
            name,
            **{"class": VanillaKD.__name__},
            acc_before=before,
            acc_after=result.test_metrics["test/acc"],
            hyperparameters=json.dumps({**chosen, "trials": len(result.trials), "val_acc": result.best_value}),
            seconds=round(seconds, 2),
        )

    # ------------------------------------------------------------------ resuming
    def check_resume(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Refuse to add runs to ``rows`` (``results.csv``) of another configuration; record this one in ``study.json``.

        With results, every shared setting must equal the recorded one and a method both configure must
        have its recorded configuration; new seeds, scenarios and methods are allowed (they only add runs),
        and a method no longer configured keeps its entry beside its rows. Without results, the record is
        simply (re)written: nothing recorded could be mixed.

        Raises:
            ValueError: naming each difference and what to do, before any training.
        """
        path = self.out / RECORD
        recorded: dict[str, Any] = {}
        if rows and path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            self._refuse_differences(recorded, str(path), only_recorded_keys=False)
        elif rows:
            legacy = self._legacy_record(rows)
            self._refuse_differences(legacy, str(self.out / "results.csv"), only_recorded_keys=True)
            warnings.warn(
                f"{self.out / 'results.csv'} has no {RECORD} (results written before it was kept): its epochs and "
                "methods' hyperparameters match this study's, which is recorded as theirs.",
                stacklevel=3,
            )
        record = {
            "settings": self.configuration["settings"],
            "methods": {**recorded.get("methods", {}), **self.configuration["methods"]},
        }
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")

    def _legacy_record(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """What results written before ``study.json`` was kept tell of their configuration.

        Their rows carry the epochs and each method's class and hyperparameters (numbers only are compared:
        other values were written as text, callables with memory addresses). The rest cannot be checked and
        is taken to be this study's: refusing such results outright would strand every finished study.
        """
        epochs = sorted({int(row["epochs"]) for row in rows if row.get("epochs")})
        methods: dict[str, Any] = {}
        for row in rows:
            if row["method"] in self.methods and row.get("hyperparameters") and not is_failed(row):
                values = json.loads(str(row["hyperparameters"]))
                numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
                methods.setdefault(row["method"], {"class": row.get("class"), "hyperparameters": numbers})
        settings = {"epochs": epochs[0] if len(epochs) == 1 else epochs} if epochs else {}
        return {"settings": settings, "methods": methods}

    def _refuse_differences(self, recorded: Mapping[str, Any], where: str, only_recorded_keys: bool) -> None:
        """Raise ``ValueError`` listing where this study's configuration differs from ``recorded`` (from ``where``)."""
        mine = self.configuration
        common = [name for name in recorded.get("methods", {}) if name in mine["methods"]]
        found = [
            (path.split(".", 1)[0], path, old, new)
            for path, old, new in _differences(recorded.get("settings", {}), mine["settings"], only_recorded_keys)
        ]
        for name in common:
            argument = {TUNED_KD: "tuning", self.control: "control"}.get(name, f"methods.{name}")
            for path, old, new in _differences(recorded["methods"][name], mine["methods"][name], only_recorded_keys):
                found.append((argument, path, old, new))
        if not found:
            return
        lines = []
        for argument, path, old, new in found:
            detail = path.split(".", 1)[1] if "." in path else ""
            detail = detail.removeprefix("tuning.") if argument == "tuning" else detail
            lines.append(f"  `{argument}`: {detail + ' ' if detail else ''}{_show(old)} in {where}, {_show(new)} now")
        raise ValueError(
            f"{self.out} holds results of another configuration: adding runs would mix both in results.csv and "
            "summary.md.\n" + "\n".join(lines) + "\nPass another `--out` for a new study, or the recorded values to "
            "resume this one (a method of another configuration can also run beside the old under a new name)."
        )

    # ------------------------------------------------------------------ the pipeline
    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        """Run every missing ``(scenario, seed, method)``; rewrite ``results.csv`` and ``summary.md`` after each."""
        quiet()
        results = self.out / "results.csv"
        rows = read_csv(results)
        self.check_resume(rows)
        done = {(row["scenario"], int(row["seed"]), row["method"]) for row in rows}
        todo = [run for run in self.runs() if run not in done]
        scenarios = {str(s): s for s in self.scenarios}
        bar = _progress(total=len(self.runs()), initial=len(self.runs()) - len(todo), enabled=progress)
        for scenario, seed, method in todo:
            bar.set_description(f"{scenario} seed {seed} {method}")
            rows.append(self.run_recorded(method, scenarios[scenario], seed))
            write_csv(results, add_gains(rows, control=self.control))
            write_text_atomic(self.out / "summary.md", self.summary(rows))
            bar.update(1)
        bar.close()
        if not todo and rows:  # a finished study: refresh the summary from the results
            write_text_atomic(self.out / "summary.md", self.summary(rows))
        if rows:
            self.plot(rows)
        return add_gains(rows, control=self.control)

    def plot(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write the study's plots: ``gains.png`` and, with tuned KD, ``tuning.png``.

        ``gains.png`` shows the gain and the gain over the control per method × scenario; ``tuning.png`` the
        validation gain over the grid per scenario, mean over seeds.
        """
        plot_gains(rows, self.out / "gains.png", control=self.control)
        if not self.tuned_kd:
            return
        panels = []
        for scenario in self.scenarios:
            search = self._search(scenario, self.seeds[0])
            names = [search._names[key] for key in search.keys]
            gains: dict[tuple[float, ...], list[float]] = {}
            for seed in self.seeds:
                for row in read_csv(self.tuning_dir(scenario, seed) / "trials.csv"):
                    if row["state"] == "COMPLETE" and row.get("val_gain"):
                        gains.setdefault(tuple(float(row[n]) for n in names), []).append(float(row["val_gain"]))
            points = [
                {**dict(zip(names, point, strict=True)), "state": "COMPLETE", "val_gain": sum(g) / len(g)}
                for point, g in gains.items()
            ]
            if points:
                panels.append((scenario, search, points))
        if not panels:
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        columns = min(len(panels), 3)
        lines = -(-len(panels) // columns)
        figure = Figure(figsize=(5.2 * columns, 4.2 * lines), layout="constrained")
        FigureCanvasAgg(figure)
        for index, (scenario, search, points) in enumerate(panels):
            axes = figure.add_subplot(lines, columns, index + 1)
            search.draw_heatmap(axes, points, title=f"{scenario}: validation gain, mean of {len(self.seeds)} seeds")
        with atomic_path(self.out / "tuning.png") as tmp:
            figure.savefig(tmp, format="png", dpi=100)

    def summary(self, rows: Sequence[dict[str, Any]]) -> str:
        """``summary.md`` of ``rows`` (with the seeds and methods of earlier runs of the study)."""
        seeds = list(dict.fromkeys([*self.seeds, *(int(row["seed"]) for row in rows)]))
        methods = dict.fromkeys([*self.methods, *(str(row["method"]) for row in rows)])
        untuned = [name for name in methods if name not in (self.control, TUNED_KD)]
        header = (
            f"# Study: {type(self.dataset).__name__}, {self.num_parties} parties "
            f"(student {self.student_party}, teacher {self.teacher_party}), seeds {seeds}, "
            f"{self.pretrain_epochs} pre-training epochs, {self.epochs} epochs per method\n\n"
        )
        rows = add_gains(rows, control=self.control)
        return header + render_summary(rows, tuned=TUNED_KD, untuned=untuned, control=self.control)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    """A progress bar with runs done, runs left and the estimated time left."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, dynamic_ncols=True)


class _Trial(NamedTuple):
    """One trial of tuned KD's search."""

    model: DistillationModule
    datamodule: PartitionedDataModule
    trainer: L.Trainer


def _unbuilt(values: Any, seed: int, callbacks: Any) -> _Trial:
    raise RuntimeError("this search only reads its results")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ABSENT = object()
"""A key one of two compared configurations does not have."""


def _describe(value: Any) -> Any:
    """``value`` as JSON that names it the same way in every process (for ``study.json``).

    Classes and functions become their import path; a ``functools.partial`` (a factory from Python, or from a
    YAML ``class_path`` with ``init_args``) its target's path and arguments; anything else its ``repr``
    without memory addresses.

    Examples:
        >>> _describe(functools.partial(VanillaKD, temperature=2.0))
        {'class_path': 'kdlightning.methods.kd.VanillaKD', 'init_args': {'temperature': 2.0}}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _describe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(item) for item in value]
    if isinstance(value, functools.partial):
        parts = [value.func, *value.args]
        if not value.args and not value.keywords:  # partial(VanillaKD) is VanillaKD
            return _describe(value.func)
        # jsonargparse builds partial(<wrapper>, <instantiator>, cls, **init_args): the class is the target
        target = next((i for i, part in enumerate(parts) if isinstance(part, type)), 0)
        described: dict[str, Any] = {"class_path": _describe(parts[target])}
        if parts[target + 1 :]:
            described["args"] = _describe(parts[target + 1 :])
        if value.keywords:
            described["init_args"] = _describe(value.keywords)
        return described
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{value.__module__}.{value.__qualname__}"
    return _ADDRESS.sub("", repr(value))


def _digest(text: str) -> str:
    """A short digest of ``text`` (a network's ``repr``: its architecture, too long to record whole)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, only_old_keys: bool, path: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves where ``old`` and ``new`` differ, as ``(dotted path, old value, new value)``.

    Mappings are compared key by key (only ``old``'s keys with ``only_old_keys``); a missing key is ``_ABSENT``.
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = list(old) if only_old_keys else list(dict.fromkeys([*old, *new]))
        return [
            difference
            for key in keys
            for difference in _differences(
                old.get(key, _ABSENT), new.get(key, _ABSENT), only_old_keys, f"{path}.{key}" if path else str(key)
            )
        ]
    return [] if old == new else [(path, old, new)]


def _show(value: Any, width: int = 80) -> str:
    """``value`` in an error message: JSON, shortened to ``width`` characters."""
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_unique(name: str, values: Sequence[Any], why: str) -> None:
    """Raise ``ValueError`` naming the argument ``name`` and its repeated values, if any."""
    repeated = [value for value, count in Counter(values).items() if count > 1]
    if repeated:
        raise ValueError(f"`{name}` repeats {repeated}: give each once ({why}).")


def _add_note(error: BaseException, note: str) -> None:
    """Add ``note`` to ``error``'s traceback (Python >= 3.11), or print it before the error propagates."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        print(note, file=sys.stderr)


def _slug(text: str) -> str:
    """``dirichlet(alpha=0.5)`` → ``dirichlet-alpha-0.5``: a directory name."""
    return "-".join("".join(c if c.isalnum() or c == "." else " " for c in text).split())


def continue_alone(student: nn.Module, teacher: nn.Module, num_classes: int) -> DistillationModule:
    """The control: the student continues alone (the teacher is not used)."""
    return StudentOnly(student, num_classes)


DEFAULT_CONFIG = Path(__file__).with_name("study_digits.yaml")
"""The embedded default study (digits): what ``kdl study`` runs with no config."""


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    """``kdl study [-c CONFIG ...] [--out DIR] [overrides]``: run (or resume) a study and print its summary."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="kdl study", description=Study.__doc__.splitlines()[0] if Study.__doc__ else None)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="study YAML (default: the embedded digits)")
    parser.add_class_arguments(Study, as_group=False)
    parser.add_argument("--progress", type=bool, default=True, help="show the progress bar")
    given = list(sys.argv[1:] if args is None else args)
    if not any(a in ("-c", "--config") or a.startswith("--config=") for a in given):
        given = ["-c", str(DEFAULT_CONFIG), *given]
    config = parser.parse_args(given)
    init = parser.instantiate(config)
    progress = init.pop("progress")
    init.pop("config", None)
    study = Study(**init)
    results = study.out / "results.csv"

    def report() -> str:
        return f"{len(read_csv(results))} of {len(study.runs())} runs are finished, in {results}."

    with exit_on_signals("kdl study", list(sys.argv[1:] if args is None else args), report):
        rows = study.run(progress=progress)
    print((study.out / "summary.md").read_text())
    print(f"results: {study.out / 'results.csv'}")
    return rows
