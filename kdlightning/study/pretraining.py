"""Pre-training a study's parties: each network in its own fit, or every cell's networks of one role in one fit.

Every cell (scenario and seed) starts from its student party's and its teacher party's networks, each pre-trained
once on that party's data and saved under ``<out>/pretrained/``. With ``batched``, the study pre-trains, before
its first cell, every network it still needs of one role (the students, then the teachers: each role is one
architecture) as members of one fit (:func:`~kdlightning.batching.pretrain_together`), each on its own party's
data and as its own fit would train it; a cell then finds its networks saved.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from kdlightning.batching import pretrain_together
from kdlightning.data import PartitionedDataModule, Partitioner
from kdlightning.errors import DivergedError
from kdlightning.methods import StudentOnly
from kdlightning.pipeline import load_weights, pretrain_once, save_weights
from kdlightning.study.config import StudyConfig
from kdlightning.study.progress import Step, StudyProgress, epochs_text, training_samples

__all__ = ["ROLES", "Pretraining"]

ROLES = ("student", "teacher")
"""The parties a cell pre-trains, each of its own architecture."""


class Pretraining:
    """The pre-trained networks of a study's parties, trained once per configuration and saved.

    Args:
        config: the study's configuration.

    Attributes:
        seconds: wall time spent pre-training (not reading saved networks) since it was built or last reset.
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.seconds = 0.0
        self._paths: dict[tuple[str, str, int], Path] = {}

    def pretraining(self, role: str, scenario: Partitioner, seed: int) -> tuple[Path, nn.Module, PartitionedDataModule]:
        """Where ``role``'s network of a cell is saved once pre-trained, a fresh one (seeded by ``seed``), its data."""
        config = self.config
        factory, party = (
            (config.student, config.student_party) if role == "student" else (config.teacher, config.teacher_party)
        )
        data = config.datamodule(scenario, seed, party, network=role)
        L.seed_everything(seed, verbose=False)
        network = factory(data.num_classes)
        parts = config.teacher_parts if role == "teacher" else []
        path = config.out / "pretrained" / f"{role}-{config.key(scenario, seed, party, repr(network), *parts)}.pt"
        return path, network, data

    def pretrained(self, role: str, scenario: Partitioner, seed: int) -> nn.Module:
        """The ``role`` ("student" or "teacher") party's pre-trained network, trained once per configuration."""
        path, network, data = self.pretraining(role, scenario, seed)

        def train(network: nn.Module) -> None:
            start = time.perf_counter()
            try:
                # no validation: nothing reads it, and 60 validation loops cost a quarter of a digits pre-training
                trainer = self.config.fit_trainer(self.config.pretrain_epochs_of(role), limit_val_batches=0)
                trainer.fit(self.config.optimized(StudentOnly(network, data.num_classes)), datamodule=data)
            except FloatingPointError as error:
                raise DivergedError(f"the {role} party's pre-training diverged: {error}") from error
            finally:
                self.seconds += time.perf_counter() - start

        return pretrain_once(path, network, train)

    def pending(self, role: str, cells: Sequence[tuple[Partitioner, int]]) -> list[_Party]:
        """``role``'s networks that ``cells`` need and no file holds (or none readable), each once."""
        pending: dict[Path, _Party] = {}
        for scenario, seed in cells:
            path, network, data = self.pretraining(role, scenario, seed)
            if path not in pending and not (path.is_file() and load_weights(path, network)):
                pending[path] = _Party(path, network, data, f"{scenario} seed {seed}")  # not saved yet: trained (again)
        return list(pending.values())

    def together(self, cells: Sequence[tuple[Partitioner, int]]) -> dict[str, list[_Party]]:
        """With ``batched``: per role, the networks :meth:`pretrain_cells` trains as members (two or more)."""
        if not self.config.batched:
            return {}
        pending = {role: self.pending(role, cells) for role in ROLES}
        return {role: parties for role, parties in pending.items() if len(parties) >= 2}

    def plan(self, cells: Sequence[tuple[Partitioner, int]]) -> list[Step]:
        """The progress bar's steps of pre-training ``cells``: per role, each fit of members, then each cell's own.

        With ``batched``, :meth:`pretrain_cells` trains a role's networks as members, ``max_members`` a fit (a step
        each); a network left alone is a step of its cell (:meth:`pretrain_cell`), as is each network unbatched.
        A network is planned where no file holds it (read without building a network per file: a file that
        exists but cannot be read is trained again, unplanned).
        """
        missing = {role: self._missing(role, cells) for role in ROLES}
        steps = []
        for role, parties in missing.items():
            if self.config.batched and len(parties) >= 2:
                for number, chunk in enumerate(self._chunks(parties)):
                    what = f"{len(chunk)} {role} networks as batched members"
                    steps.append(self._step(("pre-training", role, number), role, chunk, what))
        for scenario, seed in cells:
            for role, parties in missing.items():
                if self.config.batched and len(parties) >= 2:
                    continue
                for party in parties:
                    if party.cell == f"{scenario} seed {seed}":
                        key = ("pre-training", role, str(scenario), seed)
                        steps.append(self._step(key, role, [party], f"the {role}'s network"))
        return steps

    def _missing(self, role: str, cells: Sequence[tuple[Partitioner, int]]) -> list[_Party]:
        """``role``'s networks ``cells`` need whose file does not exist, each once (their networks not built)."""
        missing: dict[Path, _Party] = {}
        party = self.config.student_party if role == "student" else self.config.teacher_party
        for scenario, seed in cells:
            key = (role, str(scenario), seed)
            if key not in self._paths:
                self._paths[key] = self.pretraining(role, scenario, seed)[0]
            path = self._paths[key]
            if path not in missing and not path.is_file():
                data = self.config.datamodule(scenario, seed, party, network=role)
                missing[path] = _Party(path, None, data, f"{scenario} seed {seed}")
        return list(missing.values())

    def _chunks(self, parties: Sequence[_Party]) -> list[Sequence[_Party]]:
        size = len(parties) if self.config.max_members is None else max(int(self.config.max_members), 1)
        return [parties[start : start + size] for start in range(0, len(parties), size)]

    def _step(self, key: tuple[Any, ...], role: str, parties: Sequence[_Party], what: str) -> Step:
        config = self.config
        party = config.student_party if role == "student" else config.teacher_party
        cells = [p.cell for p in parties]
        where = ", ".join(cells) if len(cells) <= 3 else f"{cells[0]} ... {cells[-1]} ({len(cells)} cells)"
        epochs = config.pretrain_epochs_of(role)
        work = epochs * sum(training_samples(p.data) for p in parties)
        label = f"pre-training {what} (party {party}, {epochs_text(epochs)}): {where}"
        return Step(key, label, f"pre-training {role}", float(work))

    def pretrain_cell(self, scenario: Partitioner, seed: int, progress: StudyProgress) -> None:
        """Pre-train the cell's networks that ``progress`` plans as steps of their own (:meth:`plan`).

        A network whose pre-training diverges is not saved: the cell's runs report it.
        """
        for role in ROLES:
            key = ("pre-training", role, str(scenario), seed)
            if not progress.planned(key):
                continue
            progress.start(key)
            try:
                self.pretrained(role, scenario, seed)
            except FloatingPointError:
                pass  # the cell's runs record it as their failure
            finally:
                progress.finish(key)

    def pretrain_cells(self, cells: Sequence[tuple[Partitioner, int]], progress: StudyProgress | None = None) -> None:
        """With ``batched``: pre-train the networks ``cells`` need and no file holds, one fit per role (and chunk).

        Each network trains on its own party's data as its own fit would (``max_members`` networks a fit) and is
        saved where :meth:`pretrained` finds it. A network that diverged is not saved: its cell's own fit reports it.

        Args:
            cells: the ``(scenario, seed)`` cells to pre-train for.
            progress: the study's bar: each fit is a step of :meth:`plan`.
        """
        for role, pending in self.together(cells).items():
            parties = {
                f"{role}{k}": (party.network, party.data)
                for k, party in enumerate(pending)
                if party.network is not None
            }
            paths = {f"{role}{k}": party.path for k, party in enumerate(pending)}
            start = time.perf_counter()
            try:
                one_epoch = functools.partial(self.config.fit_trainer, 1, limit_val_batches=0)  # every network's epochs
                chunks = len(self._chunks(pending))
                if progress is not None:
                    progress.start(("pre-training", role, 0))
                fits = pretrain_together(
                    parties,
                    self.config.pretrain_epochs_of(role),
                    one_epoch,
                    max_members=self.config.max_members,
                    optimizer=self.config.optimizer,
                )
                for number, trained in enumerate(fits):
                    for name in trained:
                        save_weights(paths[name], parties[name][0])
                    if progress is not None:
                        progress.finish(("pre-training", role, number))
                        if number + 1 < chunks:
                            progress.start(("pre-training", role, number + 1))
            finally:
                self.seconds += time.perf_counter() - start


@dataclass(frozen=True)
class _Party:
    """A network to pre-train: the fresh network, its party's data, and its cell (``<scenario> seed <seed>``)."""

    path: Path
    network: nn.Module | None
    """None where only planned."""
    data: PartitionedDataModule
    cell: str
