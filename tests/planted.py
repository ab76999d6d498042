"""Data, networks and `kdl tune` configurations whose right answer is planted: shared by the search's tests.

Configs name these classes by ``planted.<name>`` (``tests/`` is on the path, as for ``conftest``), so a
`kdl tune` run in a subprocess with ``PYTHONPATH=tests`` finds them too.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn

from kdlightning.data import DatasetSource, LabelledData

__all__ = ["DATA", "CountedPlanted", "FlippedTeacher", "KillAt", "Killed", "Planted", "planted_args", "states"]


class Planted(DatasetSource):
    """Two Gaussian blobs in 2-D whose global test set has its labels flipped.

    The validation split is held out from the training pool, so it agrees with the training labels; the
    test set disagrees. The student that follows the (wrong) teacher is worst on validation and best on test.
    """

    def __init__(self, num_samples: int = 320, seed: int = 0) -> None:
        self.num_samples, self.seed = num_samples, seed

    def load(self) -> LabelledData:
        rng = np.random.default_rng(self.seed)

        def blobs(n: int) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, 2, n)
            x = rng.normal(0.0, 1.0, (n, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
            return x.astype(np.float32), y.astype(np.int64)

        x, y = blobs(self.num_samples)
        test_x, test_y = blobs(200)
        return LabelledData(x, y, test_x, 1 - test_y, num_classes=2)


class CountedPlanted(Planted):
    """The planted data knowing its class count without loading (as the built-in sources do); counts its loads."""

    loads: ClassVar[int] = 0

    def known_num_classes(self) -> int:
        return 2

    def load(self) -> LabelledData:
        CountedPlanted.loads += 1
        return super().load()


class FlippedTeacher(nn.Module):
    """A confidently wrong teacher: it predicts the other blob's class. Counts the samples it sees."""

    seen: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("direction", torch.tensor([1.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FlippedTeacher.seen += x.shape[0]
        score = 3.0 * (x @ self.direction)  # > 0 on class 1's blob
        return torch.stack([score, -score], dim=1)


class Killed(BaseException):
    """Stands for SIGKILL: Lightning and Optuna let it through, so the trial stays RUNNING in the storage."""


class KillAt(L.Callback):
    """Kill the process (raise `Killed`) in the first epoch of the `n`-th fit."""

    def __init__(self, n: int) -> None:
        self.n, self.fits = n, 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fits += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fits == self.n:
            raise Killed


DATA = {"dataset": {"class_path": "planted.Planted"}, "num_parties": 1, "val_fraction": 0.3, "batch_size": 32}


def planted_args(tmp_path: Path, tune_section: dict, max_epochs: int = 3, name: str = "search") -> list[str]:
    """`kdl tune` arguments for VanillaKD from the flipped teacher into a tiny MLP on the planted data."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "log_every_n_steps": 1},
        "model": {
            "class_path": "kdlightning.VanillaKD",
            "init_args": {
                "student": {
                    "class_path": "kdlightning.models.MLP",
                    "init_args": {"num_classes": 2, "in_features": 2, "hidden_sizes": [8]},
                },
                "teacher": {"class_path": "planted.FlippedTeacher"},
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.05}},
            },
        },
        "data": {
            "class_path": "kdlightning.data.PartitionedDataModule",
            "init_args": DATA,
        },
        "tune": tune_section,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["-c", str(path), "--out", str(tmp_path / name)]


def states(out: Path) -> list[str]:
    with open(out / "trials.csv") as handle:
        return [row["state"] for row in csv.DictReader(handle)]
