"""A study's configuration (:class:`StudyConfig`): its settings, frozen, and what follows from them alone.

Every part of a study (pre-training, a cell's runs, the reports, the Ray tasks) is given this one object:
the methods' names, the data each party sees, the key of a cell's cached files, the trainer of a fit.
Nothing here trains or reads data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import (
    DatasetSource,
    DirichletPartitioner,
    IIDPartitioner,
    LabelSkewPartitioner,
    PartitionedDataModule,
    Partitioner,
    QuantitySkewPartitioner,
    TokenizeCollate,
)
from kdlightning.errors import ConfigurationError
from kdlightning.methods import DistillationModule
from kdlightning.pipeline import NetworkFactory, describe, digest, optimized, trainer
from kdlightning.reporting import slug
from kdlightning.tuning import TuneOptions
from kdlightning.tuning.options import check_space

__all__ = [
    "NETWORKS",
    "TUNED_KD",
    "TUNED_KD_PUBLIC",
    "TUNED_NAMES",
    "TUNED_PREFIX",
    "MethodFactory",
    "StudyConfig",
    "TunedRun",
    "default_scenarios",
]

MethodFactory = Callable[[nn.Module, nn.Module, int], DistillationModule]
"""Builds a method from ``(student, other network, num_classes)``: the other is the teacher (frozen by the
method) or DML's peer (trained), always a fresh copy of the teacher party's pre-trained model."""

TUNED_KD = "tuned_kd"
"""The name of tuned KD in a study's results: :class:`~kdlightning.VanillaKD` with the values a search chose
on the student party's own validation split."""

TUNED_KD_PUBLIC = "tuned_kd_public"
"""Tuned KD whose search validated on the public split (held out before partitioning, never trained on)."""

TUNED_NAMES = {"own": TUNED_KD, "public": TUNED_KD_PUBLIC}
"""Tuned KD's name in the results for each ``tuning.validation``."""

TUNED_PREFIX = "tuned_"
"""What starts the name of every tuned run: ``tuned_kd`` and ``tuned_<method>`` (``_public`` after it)."""


@dataclass(frozen=True)
class TunedRun:
    """A tuned run of each cell: which method its search trains, and where the search validates.

    Args:
        method: the name of the study's method (a key of ``methods``) whose float arguments are searched, or
            None for tuned KD (:class:`~kdlightning.VanillaKD` with its defaults besides the searched values).
        validation: ``own`` or ``public``.
    """

    method: str | None
    validation: str

    @property
    def name(self) -> str:
        """The run's name in the results: ``tuned_kd[_public]`` or ``tuned_<method>[_public]``."""
        if self.method is None:
            return TUNED_NAMES[self.validation]
        return f"{TUNED_PREFIX}{self.method}" + ("" if self.validation == "own" else f"_{self.validation}")


NETWORKS = ("student", "teacher")
"""The study's two networks, each of its own architecture (and, on text, its own tokenizer)."""


def tokenizers_by_network(tokenizers: Any) -> dict[str, Any] | None:
    """``tokenizers`` as a study takes it (one tokenizer, or one per network) as a dict from network to tokenizer.

    Raises:
        ConfigurationError: a dict whose keys are not exactly ``student`` and ``teacher``.
        InputTypeError: a tokenizer given as a path (see :class:`~kdlightning.data.TokenizeCollate`).
    """
    if tokenizers is None:
        return None
    if not isinstance(tokenizers, Mapping):
        tokenizers = dict.fromkeys(NETWORKS, tokenizers)
    if set(tokenizers) != set(NETWORKS):
        raise ConfigurationError(
            f"`tokenizers` must give one tokenizer for both networks, or one for each of {list(NETWORKS)}; got the "
            f"keys {sorted(tokenizers)}."
        )
    TokenizeCollate(dict(tokenizers))  # a path or an empty value fails now, named
    return dict(tokenizers)


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


@dataclass(frozen=True)
class StudyConfig:
    """The settings of a :class:`~kdlightning.study.Study`, checked by it (see its arguments for each one's meaning).

    ``public_fraction`` is the effective one: 0 unless tuned KD validates on the public split.
    """

    student: NetworkFactory
    teacher: NetworkFactory
    methods: Mapping[str, MethodFactory]
    tuned_kd: bool
    tuning: TuneOptions
    dataset: DatasetSource
    scenarios: tuple[Partitioner, ...]
    seeds: tuple[int, ...]
    num_parties: int
    student_party: int
    teacher_party: int
    pretrain_epochs: int
    epochs: int
    batch_size: int
    val_fraction: float
    public_fraction: float
    control: str
    control_factory: MethodFactory
    """Builds the control: the student continuing alone."""
    out: Path
    trainer: Mapping[str, Any] = field(default_factory=dict)
    tokenizers: Mapping[str, Any] | None = None
    """On text: each network's tokenizer (:func:`tokenizers_by_network`); None for numeric inputs."""
    max_length: int | None = 128
    optimizer: OptimizerCallable | None = None
    """Every fit's optimizer (pre-training, the control, every method, tuned KD's points); None: each method's own."""
    batched: bool = True
    max_members: int | None = 32
    ray: bool | str = False
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    tuned: tuple[str, ...] = ()
    """The methods (keys of ``methods``) tuned besides tuned KD, each over the ``tuning`` space."""
    teacher_pretrain_epochs: int | None = None
    """The teacher party's pre-training epochs; None: ``pretrain_epochs``, as the student's."""
    logger: bool | Mapping[str, Any] = False
    """Log each run and the summary to W&B: True or ``WandbLogger`` arguments (:mod:`kdlightning.study.logged`)."""

    def pretrain_epochs_of(self, role: str) -> int:
        """The pre-training epochs of ``role``'s network (``student`` or ``teacher``)."""
        if role == "teacher" and self.teacher_pretrain_epochs is not None:
            return self.teacher_pretrain_epochs
        return self.pretrain_epochs

    @property
    def teacher_parts(self) -> list[Any]:
        """What a key of anything the teacher's pre-training shapes adds: its own epochs, where they are set."""
        epochs = self.teacher_pretrain_epochs
        return [] if epochs is None else [("teacher_pretrain_epochs", epochs)]

    # ------------------------------------------------------------------ the methods' names
    @functools.cached_property
    def tuned_runs(self) -> dict[str, TunedRun]:
        """Every tuned run of a cell by name: tuned KD's, then each of ``tuned``'s, for each validation."""
        methods: list[str | None] = [*([None] if self.tuned_kd else []), *self.tuned]
        runs = [TunedRun(method, mode) for method in methods for mode in self.tuning.validations]
        return {run.name: run for run in runs}

    @property
    def tuned_names(self) -> list[str]:
        """The tuned runs of each cell: ``tuned_kd`` (own validation) and/or ``tuned_kd_public``, then ``tuned``'s."""
        return list(self.tuned_runs)

    def validation_of(self, name: str) -> str:
        """Where the search of tuned run ``name`` validates (``own`` or ``public``)."""
        return self.tuned_runs[name].validation

    @property
    def tuned_settings(self) -> list[str]:
        """The names of the hyperparameters the searches try (``temperature``, ``alpha``), in the search's order."""
        if not self.tuned_runs:
            return []
        return [key.rsplit(".", 1)[-1] for key in check_space(self.tuning, None, section="tuning")]

    def untuned_names(self, rows: Sequence[Mapping[str, Any]] = ()) -> list[str]:
        """The methods the tuned runs are compared with: the study's and earlier rows', not the control nor tuned."""
        methods = dict.fromkeys([*self.methods, *(str(row["method"]) for row in rows)])
        return [name for name in methods if name != self.control and not name.startswith(TUNED_PREFIX)]

    def runs(self) -> list[tuple[str, int, str]]:
        """Every ``(scenario, seed, method)`` of the study, in the order they run."""
        names = [self.control, *self.methods, *self.tuned_names]
        return [(str(s), seed, name) for s in self.scenarios for seed in self.seeds for name in names]

    def fits(self, method: str) -> int:
        """How many fits the run of ``method`` is: the progress bar's weight of it (a tuned run: one per trial)."""
        if method not in self.tuned_runs:
            return 1
        if self.tuning.sampler == "grid":
            return math.prod(len(p.values or ()) for p in check_space(self.tuning, None, section="tuning").values())
        return self.tuning.n_trials

    def optimized(self, model: DistillationModule) -> DistillationModule:
        """``model`` trained with the study's ``optimizer``.

        See :meth:`~kdlightning.methods.DistillationModule.use_optimizer`.

        Unchanged when the study sets none: each method then trains with its own.
        """
        return optimized(model, self.optimizer)

    # ------------------------------------------------------------------ a cell's data, files and trainers
    def datamodule(
        self,
        scenario: Partitioner,
        seed: int,
        party: int,
        validation: str | list[str] = "own",
        network: str | None = None,
    ) -> PartitionedDataModule:
        """Party ``party``'s view of ``scenario`` with ``seed`` (its own data is its transfer set).

        On text its batches are tokenized for a cell's methods (the student's inputs by the student's tokenizer,
        the teacher's and DML's peer's by the teacher's), or, with ``network``, for that network trained alone
        (its pre-training: it is the method's student).
        """
        return PartitionedDataModule(
            dataset=self.dataset,
            partitioner=scenario,
            num_parties=self.num_parties,
            partition_id=party,
            teacher_partition_id=self.teacher_party if party != self.teacher_party else self.student_party,
            public_fraction=self.public_fraction,
            val_fraction=self.val_fraction,
            validation=validation,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            seed=seed,
            tokenizers=self.collate(network),
        )

    def collate(self, network: str | None = None) -> TokenizeCollate | None:
        """The tokenization of a cell's methods, or of ``network`` trained alone; None for numeric data."""
        return None if self.tokenizers is None else self._collates[network]

    @functools.cached_property
    def _collates(self) -> dict[str | None, TokenizeCollate]:
        assert self.tokenizers is not None
        student, teacher = self.tokenizers["student"], self.tokenizers["teacher"]
        methods = TokenizeCollate({"student": student, "teacher": teacher, "peer": teacher}, self.max_length)
        collates: dict[str | None, TokenizeCollate] = {None: methods}
        for name in NETWORKS:
            collates[name] = TokenizeCollate({"student": self.tokenizers[name]}, self.max_length)
        return collates

    def key(self, scenario: Partitioner, seed: int, *parts: Any) -> str:
        """A digest of the study's configuration for ``scenario`` and ``seed``, and ``parts`` (names cached files)."""
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
            *([collate.fingerprint()] if (collate := self.collate()) is not None else []),
            *([describe(self.optimizer)] if self.optimizer is not None else []),
            *parts,
        )

    def tuning_dir(self, scenario: Partitioner, seed: int, validation: str = "own", method: str | None = None) -> Path:
        """Where the search for ``scenario`` and ``seed`` (validating on ``validation``) keeps its files.

        Tuned KD's under ``tuning/<scenario>-seed<seed>[-public]``, a tuned ``method``'s under ``tuning/<method>/``.
        """
        suffix = "" if validation == "own" else f"-{validation}"
        root = self.out / "tuning" if method is None else self.out / "tuning" / slug(method)
        return root / f"{slug(str(scenario))}-seed{seed}{suffix}"

    def fit_trainer(self, max_epochs: int, callbacks: Sequence[L.Callback] = (), **defaults: Any) -> L.Trainer:
        """A quiet trainer with the study's ``trainer`` settings (over the pipeline's ``defaults``)."""
        return trainer(max_epochs, callbacks, self.trainer, **defaults)

    def cache(self) -> CacheReferenceOutputs:
        """The teacher-output cache every run of the study shares (``<out>/cache``)."""
        return CacheReferenceOutputs(cache_dir=str(self.out / "cache"))
