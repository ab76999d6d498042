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
from pathlib import Path

import lightning as L
from torch import nn

from kdlightning.batching import pretrain_together
from kdlightning.data import PartitionedDataModule, Partitioner
from kdlightning.errors import DivergedError
from kdlightning.methods import StudentOnly
from kdlightning.pipeline import load_weights, pretrain_once, save_weights
from kdlightning.study.config import StudyConfig

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

    def pretrain_cells(self, cells: Sequence[tuple[Partitioner, int]], roles: Sequence[str] = ROLES) -> None:
        """With ``batched``: pre-train the networks ``cells`` need and no file holds, one fit per role (and chunk).

        Each network trains on its own party's data as its own fit would (``max_members`` networks a fit) and is
        saved where :meth:`pretrained` finds it. A network that diverged is not saved: its cell's own fit reports it.

        Args:
            cells: the ``(scenario, seed)`` cells to pre-train for.
            roles: which parties (``student``, ``teacher``).
        """
        if not self.config.batched:
            return
        for role in roles:
            pending: dict[Path, tuple[nn.Module, PartitionedDataModule]] = {}
            for scenario, seed in cells:
                path, network, data = self.pretraining(role, scenario, seed)
                if path not in pending and not (path.is_file() and load_weights(path, network)):
                    pending[path] = (network, data)  # not saved yet, or unreadable: trained (again)
            if len(pending) < 2:  # one network is its own fit
                continue
            parties = {f"{role}{k}": value for k, value in enumerate(pending.values())}
            paths = dict(zip(parties, pending, strict=True))
            start = time.perf_counter()
            try:
                one_epoch = functools.partial(self.config.fit_trainer, 1, limit_val_batches=0)  # every network's epochs
                chunks = pretrain_together(
                    parties,
                    self.config.pretrain_epochs_of(role),
                    one_epoch,
                    max_members=self.config.max_members,
                    optimizer=self.config.optimizer,
                )
                for trained in chunks:
                    for name in trained:
                        save_weights(paths[name], parties[name][0])
            finally:
                self.seconds += time.perf_counter() - start
