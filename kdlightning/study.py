"""The study pipeline behind ``kdl study``: every method, every scenario, every seed, from the same start.

For each scenario (a partitioner) and seed it partitions the training pool, pre-trains the
teacher's and the student's models on their own parties with :class:`~kdlightning.StudentOnly`
(cached by configuration), measures the student's test accuracy before, runs every method from
that same pre-trained student beside a control that continues the student alone for as many
epochs, and records each run in ``results.csv``. ``summary.md`` is recomputed from ``results.csv``
after every run (:mod:`kdlightning.reporting`), and both are written atomically: a killed study
loses no finished run and resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
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
from kdlightning.methods import DistillationModule, StudentOnly, VanillaKD
from kdlightning.reporting import add_gains, plot_gains, read_csv, render_summary, write_csv
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
        self.seeds = list(seeds)
        self.num_parties, self.student_party, self.teacher_party = num_parties, student_party, teacher_party
        self.pretrain_epochs, self.epochs = pretrain_epochs, epochs
        self.batch_size, self.val_fraction, self.control = batch_size, val_fraction, control
        self.out = Path(out)
        self._before: dict[tuple[str, int], float] = {}
        for party, name in ((student_party, "student_party"), (teacher_party, "teacher_party")):
            if not 0 <= party < num_parties:
                raise ValueError(f"`{name}` must lie in [0, num_parties={num_parties}), got {party!r}.")
        labels = load_once(self.dataset).train_labels
        for scenario in self.scenarios:  # an impossible scenario fails now, not after hours of others
            scenario.partition(labels, num_parties, self.seeds[0])

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
        quiet_trainer(self.pretrain_epochs).fit(StudentOnly(network, data.num_classes), datamodule=data)
        with atomic_path(path) as tmp:
            torch.save(network.state_dict(), tmp)
        return network

    def test_accuracy(self, model: DistillationModule, data: PartitionedDataModule) -> float:
        """The student's accuracy on the global test set."""
        return float(quiet_trainer(1).test(model, datamodule=data, verbose=False)[0]["test/acc"])

    def _start(self, scenario: Partitioner, seed: int) -> tuple[PartitionedDataModule, nn.Module, nn.Module, float]:
        """The student's data, both pre-trained networks and the student's test accuracy before any method."""
        data = self.datamodule(scenario, seed, self.student_party)
        student = self.pretrained("student", scenario, seed)
        teacher = self.pretrained("teacher", scenario, seed)
        key = (str(scenario), seed)
        if key not in self._before:
            self._before[key] = self.test_accuracy(StudentOnly(copy.deepcopy(student), data.num_classes), data)
        return data, student, teacher, self._before[key]

    def _row(self, scenario: Partitioner, seed: int, name: str, **values: Any) -> dict[str, Any]:
        return {"scenario": str(scenario), "seed": seed, "method": name, **values, "epochs": self.epochs}

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
        if options.storage is not None:  # one storage, one named search per scenario and seed
            options = dataclasses.replace(options, study_name=f"{options.study_name}-{out.name}")
        return Search(
            build or _unbuilt,
            VanillaKD,
            options,
            out,
            description=description,
            seed=seed,
            cache_dir=self.out / "cache",
            verbose=False,
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

    # ------------------------------------------------------------------ the pipeline
    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        """Run every missing ``(scenario, seed, method)``; rewrite ``results.csv`` and ``summary.md`` after each."""
        quiet()
        results = self.out / "results.csv"
        rows = read_csv(results)
        done = {(row["scenario"], int(row["seed"]), row["method"]) for row in rows}
        todo = [run for run in self.runs() if run not in done]
        scenarios = {str(s): s for s in self.scenarios}
        bar = _progress(total=len(self.runs()), initial=len(self.runs()) - len(todo), enabled=progress)
        for scenario, seed, method in todo:
            bar.set_description(f"{scenario} seed {seed} {method}")
            rows.append(self.run_method(method, scenarios[scenario], seed))
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
        """``summary.md`` of ``rows``."""
        header = (
            f"# Study: {type(self.dataset).__name__}, {self.num_parties} parties "
            f"(student {self.student_party}, teacher {self.teacher_party}), seeds {self.seeds}, "
            f"{self.pretrain_epochs} pre-training epochs, {self.epochs} epochs per method\n\n"
        )
        rows = add_gains(rows, control=self.control)
        return header + render_summary(rows, tuned=TUNED_KD, untuned=list(self.methods), control=self.control)


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
    rows = study.run(progress=progress)
    print((study.out / "summary.md").read_text())
    print(f"results: {study.out / 'results.csv'}")
    return rows
